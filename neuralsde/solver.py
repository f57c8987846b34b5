"""Solver configuration, its validation, and the one place where torchsde is called.

Layout: the framework uses ``(batch, time, channels)``; torchsde uses ``(time, batch, channels)``;
``sdeint`` here transposes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torchsde

from neuralsde.brownian import BROWNIAN_KINDS, draw_entropy, make_brownian
from neuralsde.errors import ConfigError, bad_option

# Stratonovich methods and the adjoint method that reverses each exactly or approximately.
ADJOINT_METHODS = {
    "reversible_heun": "adjoint_reversible_heun",
    "midpoint": "midpoint",
    "euler_heun": "euler_heun",
}
BACKENDS = ("torchsde", "fast")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass
class SolverConfig:
    """How SDEs (and the CDE discriminator) are solved.

    method: a Stratonovich method (``reversible_heun``, ``midpoint``, ``euler_heun``).
    adjoint: backpropagate with the adjoint (``True``) or directly through the solver.
    adjoint_method: must match ``method`` (``None`` picks the match); torchsde only warns on a mismatch.
    dt: step size; must divide every gap of the observation times exactly.
    brownian: ``interval`` (Brownian Interval) or ``tree`` (virtual Brownian tree).
    backend: ``torchsde`` (reference) or ``fast`` (lean solvers, see ``neuralsde.fast``): ``reversible_heun``
        (exact reversible adjoint) or ``midpoint``. With ``backend=fast, method=midpoint``, ``adjoint=True``
        is torchsde's continuous midpoint adjoint (same approximate gradients as the torchsde backend, memory
        O(1) in steps, backward re-evaluates both stages); ``adjoint=False`` gives the exact gradients of the
        discretisation through plain autograd (memory O(steps), double backward possible). ``euler_heun``
        needs ``torchsde``.
    compile: ``None`` (eager) or a ``torch.compile`` mode for the SDE-GAN's vector-field networks
        (``reduce-overhead`` and ``max-autotune`` capture CUDA graphs, and are refused on CUDA inputs: see
        ``neuralsde.compiling``). Compiled fields run through the module path (torchsde, or the fast backend's
        generic autograd path), not the fast backend's fused hand-written one. Off by default: slower on a CPU
        and on an H200 (``make bench`` and ``scripts/bench_gpu.sh``, row 8).
    """

    method: str = "reversible_heun"
    adjoint: bool = True
    adjoint_method: str | None = None
    dt: float = 1.0
    brownian: str = "interval"
    backend: str = "torchsde"
    compile: str | None = None

    def __post_init__(self):
        # Types first: `solver.dt=abc` met `self.dt > 0` as a TypeError traceback, `solver.adjoint=abc` an
        # OmegaConf ValidationError deep inside hydra's instantiate.
        if not isinstance(self.adjoint, bool):
            raise bad_option("solver.adjoint", self.adjoint, "true or false",
                             "set solver.adjoint=true (adjoint gradients) or solver.adjoint=false (direct)")
        if isinstance(self.dt, bool) or not isinstance(self.dt, (int, float)):
            raise bad_option("solver.dt", self.dt, "a positive number", "set solver.dt=1.0 (index time), or e.g. 0.5")
        if self.method not in ADJOINT_METHODS:
            raise bad_option("solver.method", self.method, f"one of {sorted(ADJOINT_METHODS)}",
                             "pick solver=reversible_heun, solver=midpoint or solver=euler_heun")
        expected = ADJOINT_METHODS[self.method]
        if self.adjoint_method is None:
            self.adjoint_method = expected
        elif self.adjoint_method != expected:
            raise bad_option("solver.adjoint_method", self.adjoint_method,
                             f"{expected!r} for method={self.method!r} (a mismatched adjoint gives wrong gradients)",
                             f"set solver.adjoint_method={expected} or leave it null")
        if self.brownian not in BROWNIAN_KINDS:
            raise bad_option("solver.brownian", self.brownian, f"one of {BROWNIAN_KINDS}",
                             "set solver.brownian=interval or solver.brownian=tree")
        if self.backend not in BACKENDS:
            raise bad_option("solver.backend", self.backend, f"one of {BACKENDS}",
                             "set solver.backend=torchsde or solver.backend=fast")
        if self.backend == "fast" and self.method not in ("reversible_heun", "midpoint"):
            raise bad_option("solver.backend", self.backend,
                             f"backend=torchsde for method={self.method!r} (the fast backend implements "
                             "reversible_heun and midpoint only)",
                             "use solver.backend=torchsde with this method, or solver=reversible_heun / midpoint")
        if self.backend == "fast" and self.brownian != "interval":
            raise bad_option("solver.brownian", self.brownian,
                             "'interval' with backend=fast (it draws grid increments in one call; the choice of "
                             "Brownian motion applies to the torchsde backend)",
                             f"add solver.backend=torchsde to use solver.brownian={self.brownian}")
        if not self.dt > 0:
            raise bad_option("solver.dt", self.dt, "a positive step size", "set solver.dt=1.0 (index time)")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise bad_option("solver.compile", self.compile, f"null or one of {COMPILE_MODES}",
                             "set solver.compile=null (eager) or solver.compile=default")

    def check_grid(self, ts: torch.Tensor) -> None:
        """Raise ConfigError unless stepping by ``dt`` from ``ts[0]`` lands exactly on every ``ts[i]``.

        torchsde steps by repeated addition and interpolates when it overshoots an observation time;
        then the reversible adjoint is no longer exact (relative gradient errors ~1e-3 instead of ~1e-16).
        The check replays that addition in the dtype of ``ts``.
        """
        values = ts.detach().cpu()
        step = torch.tensor(self.dt, dtype=values.dtype)
        current = values[0].clone()
        for k, target in enumerate(values[1:], start=1):
            n = 0
            while current < target:
                current = torch.minimum(current + step, values[-1])
                n += 1
                if n > 1_000_000:
                    break
            if current != target:
                raise ConfigError(
                    f"solver.dt={self.dt} does not divide the gap before observation time ts[{k}]={target.item()!r} "
                    f"exactly (steps land on {current.item()!r}). Expected a dt whose repeated addition hits every "
                    "observation time. Fix: use index time (data.time_unit=index, solver.dt=1.0) or a power-of-two "
                    "dt such as 0.5 or 0.25 that divides every gap.")

    def num_steps(self, ts: torch.Tensor) -> int:
        return round(float(ts[-1] - ts[0]) / self.dt)


def sdeint(sde, y0: torch.Tensor, ts: torch.Tensor, cfg: SolverConfig, *, entropy: int | None = None,
           adjoint_params: tuple | None = None, logqp: bool = False, bm=None):
    """Solve ``sde`` from ``y0`` ``(batch, state)`` at ``ts`` ``(T,)``; return ``(batch, T, state)``.

    With ``logqp=True`` also returns the log-ratio increments ``(batch, T - 1)`` (torchsde's KL path
    term); the Brownian motion then has one extra channel, as torchsde augments the state.
    ``cfg.backend=fast`` solves diagonal-noise SDEs by reversible Heun or midpoint in ``neuralsde.fast`` (same
    numbers as torchsde on the same increments, drawn on the step grid from ``entropy``); other SDEs and a given
    ``bm`` go to torchsde.
    """
    batch = y0.size(0)
    if bm is None and fast_handles(cfg, sde):
        return _fast_sdeint(sde, y0, ts, cfg, entropy, adjoint_params, logqp)
    if bm is None and cfg.backend == "fast":
        # Said, not silent: torchsde is several times slower and draws other noise for the same seed.
        warnings.warn(f"solver.backend=fast solves Stratonovich diagonal-noise SDEs only; {type(sde).__name__} "
                      f"(sde_type={getattr(sde, 'sde_type', None)!r}, noise_type={getattr(sde, 'noise_type', None)!r}) "
                      "is solved by torchsde instead. Fix: set solver.backend=torchsde to choose it explicitly",
                      RuntimeWarning, stacklevel=2)
    if bm is None:
        noise = sde.noise_size
        size = (batch, noise + 1 if logqp else noise)
        bm = make_brownian(cfg.brownian, float(ts[0]), float(ts[-1]), size, cfg.dt,
                           draw_entropy() if entropy is None else entropy, y0.dtype, y0.device)
    kwargs = dict(method=cfg.method, dt=cfg.dt, bm=bm, logqp=logqp)
    if cfg.adjoint:
        kwargs.update(adjoint_method=cfg.adjoint_method)
        if adjoint_params is not None:
            kwargs.update(adjoint_params=adjoint_params)
        out = torchsde.sdeint_adjoint(sde, y0, ts, **kwargs)
    else:
        out = torchsde.sdeint(sde, y0, ts, **kwargs)
    if logqp:
        ys, log_ratio = out
        return ys.transpose(0, 1), log_ratio.transpose(0, 1)
    return out.transpose(0, 1)


def fast_handles(cfg: SolverConfig, sde) -> bool:
    """Whether ``sdeint`` solves ``sde`` on the fast backend: reversible Heun or midpoint, Stratonovich, diagonal
    noise. (The SDE-GAN's general-noise generator calls ``neuralsde.fast`` itself, with its fused fields.)"""
    return (cfg.backend == "fast" and cfg.method in ("reversible_heun", "midpoint") and
            getattr(sde, "sde_type", None) == "stratonovich" and getattr(sde, "noise_type", None) == "diagonal")


def _fast_sdeint(sde, y0, ts, cfg: SolverConfig, entropy, adjoint_params, logqp: bool):
    from neuralsde.fast import sample_increments
    from neuralsde.fast.logqp import fast_sdeint_logqp
    from neuralsde.fast.reversible_heun import fast_sdeint_diagonal

    seed = draw_entropy() if entropy is None else entropy
    noise = sde.noise_size + 1 if logqp else sde.noise_size
    dW = sample_increments(cfg.num_steps(ts), y0.size(0), noise, cfg.dt,
                           generator=torch.Generator().manual_seed(seed), dtype=y0.dtype, device=y0.device)
    if logqp:
        ys, log_ratio = fast_sdeint_logqp(sde, y0, ts, cfg.dt, dW, cfg.adjoint, adjoint_params, method=cfg.method)
        return ys.transpose(0, 1), log_ratio.transpose(0, 1)
    return fast_sdeint_diagonal(sde, y0, ts, cfg.dt, dW, cfg.adjoint, adjoint_params, cfg.method).transpose(0, 1)
