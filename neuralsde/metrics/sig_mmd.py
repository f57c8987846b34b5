"""Signature-kernel MMD between real and generated paths, with a bootstrap confidence interval.

Two kernels, both computed with ``pysiglib``:

* ``kind="truncated"`` (the SDE-GAN paper's metric): features are the depth-``depth`` truncated signatures
  (no scalar term), the kernel is their dot product.
* ``kind="pde"``: the untruncated signature kernel, solved as a Goursat PDE on a grid refined by
  ``2**dyadic_order``, with a linear or RBF static kernel.

Scaling. Before any signature the paths are prepared the same way for both samples:

1. missing values are filled (``torchcde.linear_interpolation_coeffs``: linear in time inside gaps,
   back-/forward-fill at the ends);
2. the time channel is mapped onto [0, 1] with the *real* sample's time range (the model's time unit may
   span e.g. 0..63, whose level-k signature terms grow like 63**k / k! and would swamp the data);
3. data channels are multiplied by ``path_scale`` (1 by default, right for one normalised channel, whose level-k
   terms decay like 1/k!). With several channels, or heavy tails, a few large paths can dominate the kernel
   (it grows like the path's length to the 2 * depth, or exponentially for ``pde``) and the estimate becomes
   noise: e.g. Beijing air quality (6 channels) at 1 gives real vs real MMD² -9e3 (-6e4, 1e4). About
   ``1 / (2 sqrt(channels))`` keeps it well behaved (0.002 (-0.02, 0.03) there); the multi-channel experiments
   set it (``configs/experiment``), and the bootstrap interval shows how noisy an estimate is;
4. with ``basepoint=True`` a point (t_0, 0, ..., 0) is prepended: signatures only see increments, so
   without it the distribution of the initial value would be invisible to the metric.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pysiglib
import torch

from neuralsde.errors import ConfigError, DataError, bad_option
from neuralsde.metrics._paths import check_paths, fill_missing, make_generator, rescale_time, time_map

KINDS = ("truncated", "pde")
STATIC_KERNELS = ("linear", "rbf")
MAX_FEATURE_GIB = 4.0
# K_xx of the last real sample: the metrics callback compares one fixed real sample at every validation, and K_xx is
# a quarter of the metric's time at energy's sizes (PDE kernel; symmetric Gram matrices cost half of K_xy: a
# validation's signature MMD is 1.25x faster, bench row 11). Keyed on the prepared real paths themselves, compared
# exactly, and the kernel's options, so a hit returns what computing it again would.
_REAL_GRAM: list = []  # [] or [(key, x, kxx)]


@dataclass(frozen=True)
class MMDResult:
    """Unbiased MMD² estimate, the bounds of its percentile bootstrap confidence interval, and the biased estimate.

    ``mmd`` (the paper's figure) leaves out k(x, x) and k(y, y). ``mmd_biased`` (the V-statistic,
    ||mean phi(x) - mean phi(y)||² in the kernel's feature space) keeps them, and ``mmd`` equals it less each
    sample's feature-space variance (trace of the covariance of phi) over its size minus one: a sample of exploding
    paths drives ``mmd`` far below zero (-1e24 for OU paths times +-1e3) while ``mmd_biased`` grows with it, which
    makes the biased one the figure to minimise in a search. It is >= 0 up to rounding for ``truncated`` (a Gram
    matrix of feature vectors); the ``pde`` solver's Gram matrices are positive semi-definite only up to its error,
    which for large increments at a low ``dyadic_order`` can make it negative too (e.g. OU paths times 3, order 1).
    """

    mmd: float
    ci_low: float
    ci_high: float
    mmd_biased: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def prepare_paths(
    real: torch.Tensor, fake: torch.Tensor, *, basepoint: bool = True, path_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill, rescale and basepoint both samples as described in the module docstring.

    real ``(m, T, C)``, fake ``(n, T', C)`` -> float64 ``(m, T[+1], C)``, ``(n, T'[+1], C)``.
    """
    real = check_paths(real, "real")
    fake = check_paths(fake, "fake")
    if real.shape[2] != fake.shape[2]:
        raise DataError(
            f"real has {real.shape[2]} channels but fake has {fake.shape[2]}: expected the same. "
            "Fix: compare paths of the same dataset."
        )
    t0, span = time_map(real)
    out = []
    for x in (real, fake):
        x = rescale_time(fill_missing(x).double(), t0, span)
        x = torch.cat([x[..., :1], x[..., 1:] * path_scale], dim=-1)
        if basepoint:
            start = torch.cat([x[:, :1, :1], torch.zeros_like(x[:, :1, 1:])], dim=-1)
            x = torch.cat([start, x], dim=1)
        out.append(x)
    return out[0], out[1]


def _static_kernel(static_kernel, rbf_sigma: float):
    if isinstance(static_kernel, pysiglib.StaticKernel):
        return static_kernel
    if static_kernel == "linear":
        return pysiglib.LinearKernel()
    if static_kernel == "rbf":
        return pysiglib.RBFKernel(sigma=rbf_sigma)
    raise bad_option(
        "static_kernel",
        static_kernel,
        f"one of {STATIC_KERNELS} or a pysiglib.StaticKernel",
        "pick a known static kernel",
    )


def _compute_device(x: torch.Tensor) -> torch.Tensor:
    # pysiglib handles CUDA tensors only when built with CUDA; otherwise compute on the CPU.
    return x if x.device.type == "cpu" or pysiglib.BUILT_WITH_CUDA else x.cpu()


def signature_features(paths: torch.Tensor, depth: int = 5, *, n_jobs: int | None = None) -> torch.Tensor:
    """Truncated signatures ``(batch, sig_length(channels, depth))`` of NaN-free paths ``(batch, time, channels)``.

    Levels are concatenated, level k flattened row-major (index i1*d**(k-1) + ... + ik); no scalar term.
    """
    n_jobs = torch.get_num_threads() if n_jobs is None else n_jobs
    return pysiglib.sig(_compute_device(paths).contiguous(), depth, n_jobs=n_jobs)


def gram_matrices(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kind: str = "truncated",
    depth: int = 5,
    dyadic_order: int = 1,
    static_kernel="linear",
    rbf_sigma: float = 1.0,
    n_jobs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel Gram matrices ``K_xx (m, m)``, ``K_yy (n, n)``, ``K_xy (m, n)`` of prepared paths.

    x ``(m, T, C)`` and y ``(n, T', C)`` must be NaN-free (see ``prepare_paths``).
    """
    n_jobs = torch.get_num_threads() if n_jobs is None else n_jobs
    if kind == "truncated":
        # features are held in full: (m + n) * sig_length float64 values; refuse what would not fit comfortably.
        gib = (x.shape[0] + y.shape[0]) * pysiglib.sig_length(x.shape[-1], depth) * 8 / 2**30
        if gib > MAX_FEATURE_GIB:
            raise ConfigError(
                f"depth={depth} signatures of {x.shape[-1]} channels for {x.shape[0] + y.shape[0]} "
                f"paths need {gib:.1f} GiB, over the {MAX_FEATURE_GIB} GiB limit. Fix: lower the depth, "
                'pass fewer paths, or use kind="pde", whose memory does not grow with depth.'
            )
        # no K_xx cache here: the real features are needed for K_xy anyway, and fx @ fx.T is one product
        fx, fy = signature_features(x, depth, n_jobs=n_jobs), signature_features(y, depth, n_jobs=n_jobs)
        return fx @ fx.T, fy @ fy.T, fx @ fy.T
    if kind == "pde":
        kernel = _static_kernel(static_kernel, rbf_sigma)
        x, y = _compute_device(x).contiguous(), _compute_device(y).contiguous()

        def gram(a, b):
            return pysiglib.sig_kernel_gram(a, b, dyadic_order=dyadic_order, static_kernel=kernel, n_jobs=n_jobs)

        key = None if not isinstance(static_kernel, str) else ("pde", dyadic_order, static_kernel, rbf_sigma)
        return _real_gram(x, key, lambda: gram(x, x)), gram(y, y), gram(x, y)
    raise bad_option("kind", kind, f"one of {KINDS}", 'use "truncated" (paper) or "pde"')


def _real_gram(x: torch.Tensor, key, compute) -> torch.Tensor:
    """``compute()`` (the PDE kernel's K_xx of ``x``), or a copy of the cached one when ``x`` and ``key`` equal the
    last call's (bench row 11 measures the PDE kernel, the expensive one; truncated signatures are not cached)."""
    if key is not None and _REAL_GRAM:
        last_key, last_x, kxx = _REAL_GRAM[0]
        if (last_key == key and last_x.shape == x.shape and last_x.dtype == x.dtype and last_x.device == x.device
                and torch.equal(last_x, x)):
            return kxx.clone()
    kxx = compute()
    if key is not None:
        _REAL_GRAM[:] = [(key, x.clone(), kxx.clone())]
    return kxx


def mmd_unbiased(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> float:
    """Unbiased MMD² from Gram matrices ``(m, m)``, ``(n, n)``, ``(m, n)``; diagonals are left out."""
    m, n = kxx.shape[0], kyy.shape[0]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.mean())


def mmd_biased(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> float:
    """Biased MMD² (V-statistic) from Gram matrices ``(m, m)``, ``(n, n)``, ``(m, n)``; diagonals are kept."""
    return float(kxx.mean() + kyy.mean() - 2 * kxy.mean())


def bootstrap_mmd(
    kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor, *, n_boot: int = 200, generator: torch.Generator
) -> torch.Tensor:
    """``(n_boot,)`` unbiased MMD² estimates on resamples (with replacement) of each sample.

    A resample is held as counts ``c`` per original path. Pairs of copies of the same original path are left
    out of the within-sample sums, as the diagonal is in the estimate itself; otherwise every duplicate
    would add k(x, x) and push the bootstrap distribution above the estimate. A resample made of a single
    distinct path has no such pair and gives NaN (only likely for samples of a few paths).
    """
    m, n = kxx.shape[0], kyy.shape[0]
    dev = generator.device
    ix = torch.randint(m, (n_boot, m), generator=generator, device=dev)
    iy = torch.randint(n, (n_boot, n), generator=generator, device=dev)
    kxx, kyy, kxy = kxx.to(dev), kyy.to(dev), kxy.to(dev)
    cx = torch.zeros(n_boot, m, dtype=kxx.dtype, device=dev).scatter_add_(1, ix, torch.ones_like(ix, dtype=kxx.dtype))
    cy = torch.zeros(n_boot, n, dtype=kxx.dtype, device=dev).scatter_add_(1, iy, torch.ones_like(iy, dtype=kxx.dtype))

    def within(c, k):
        pairs = c.sum(1) ** 2 - (c**2).sum(1)
        total = torch.einsum("bi,ij,bj->b", c, k, c) - (c**2 * k.diagonal()).sum(1)
        # no off-diagonal pair: rounding may leave total != 0, so set NaN explicitly rather than +-inf.
        return torch.where(pairs > 0, total / pairs.clamp_min(1), torch.nan)

    return within(cx, kxx) + within(cy, kyy) - 2 * torch.einsum("bi,ij,bj->b", cx, kxy, cy) / (m * n)


def signature_mmd(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    kind: str = "truncated",
    depth: int = 5,
    dyadic_order: int = 1,
    static_kernel="linear",
    rbf_sigma: float = 1.0,
    basepoint: bool = True,
    path_scale: float = 1.0,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int | torch.Generator = 0,
    n_jobs: int | None = None,
) -> MMDResult:
    """Unbiased (and biased, see ``MMDResult``) signature-kernel MMD² between real ``(m, T, C)`` and fake
    ``(n, T', C)`` paths.

    Channel 0 is time; real may hold NaN (filled by linear interpolation in time via
    ``torchcde.linear_interpolation_coeffs``, see ``prepare_paths``). ``kind``, ``depth`` (truncated),
    ``dyadic_order`` / ``static_kernel`` ("linear", "rbf" with ``rbf_sigma``, or a ``pysiglib.StaticKernel``;
    pde) choose the kernel. The CI is the ``ci`` percentile interval of ``n_boot`` bootstrap estimates,
    seeded by ``seed``; ``n_boot=0`` gives the estimate as both bounds. Gram matrices are float64 and are
    computed on the CPU unless pysiglib was built with CUDA.
    """
    if kind not in KINDS:
        raise bad_option("kind", kind, f"one of {KINDS}", 'use "truncated" (paper) or "pde"')
    if kind == "truncated" and (not isinstance(depth, int) or depth < 1):
        raise bad_option("depth", depth, "an int >= 1", "use 5 as in the paper")
    if not 0 < ci < 1:
        raise bad_option("ci", ci, "a level in (0, 1)", "use 0.95")
    if n_boot < 0:
        raise bad_option("n_boot", n_boot, "an int >= 0", "use 200, or 0 to skip the bootstrap")
    x, y = prepare_paths(real, fake, basepoint=basepoint, path_scale=path_scale)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise DataError(
            f"got {x.shape[0]} real and {y.shape[0]} fake paths: the unbiased MMD needs at least 2 "
            "of each. Fix: pass more paths."
        )
    kxx, kyy, kxy = gram_matrices(
        x,
        y,
        kind=kind,
        depth=depth,
        dyadic_order=dyadic_order,
        static_kernel=static_kernel,
        rbf_sigma=rbf_sigma,
        n_jobs=n_jobs,
    )
    estimate, biased = mmd_unbiased(kxx, kyy, kxy), mmd_biased(kxx, kyy, kxy)
    if n_boot == 0:
        return MMDResult(estimate, estimate, estimate, biased)
    boots = bootstrap_mmd(kxx, kyy, kxy, n_boot=n_boot, generator=make_generator(seed, kxx.device))
    q = torch.tensor([(1 - ci) / 2, (1 + ci) / 2], dtype=boots.dtype, device=boots.device)
    low, high = torch.nanquantile(boots, q).tolist()  # NaN: see bootstrap_mmd
    return MMDResult(estimate, low, high, biased)
