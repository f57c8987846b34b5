"""Brownian motion for torchsde solves: seeded, with the step size as a query hint."""
from __future__ import annotations

import torch
import torchsde

from neuralsde.errors import bad_option

BROWNIAN_KINDS = ("interval", "tree")


def make_brownian(kind: str, t0: float, t1: float, size: tuple[int, int], dt: float, entropy: int,
                  dtype: torch.dtype, device: torch.device, levy_area: str = "none"):
    """Brownian motion on ``[t0, t1]`` of shape ``size = (batch, noise)``.

    ``entropy`` must come from the framework's seeded generator: without it torchsde seeds from numpy's
    global RNG, which breaks reproducibility and exact resume. The Brownian Interval gets ``dt`` as its
    query hint, which makes each query several times cheaper than torchsde's hint-free default.
    """
    if kind == "interval":
        return torchsde.BrownianInterval(t0=t0, t1=t1, size=size, dtype=dtype, device=device, entropy=entropy,
                                         dt=dt, levy_area_approximation=levy_area)
    if kind == "tree":
        # The virtual Brownian tree: constant memory, slower; kept for comparison (paper's baseline).
        return torchsde.BrownianTree(t0=t0, t1=t1, w0=torch.zeros(size, dtype=dtype, device=device),
                                     entropy=entropy, tol=dt / 8)
    raise bad_option("solver.brownian", kind, f"one of {BROWNIAN_KINDS}", "pick solver.brownian=interval or tree")


def draw_entropy(generator: torch.Generator | None = None) -> int:
    """A seed for one Brownian motion, drawn from ``generator`` (or torch's global RNG)."""
    return int(torch.randint(0, 2**31 - 1, (), generator=generator))


class ZeroBrownian(torchsde.BrownianBase if hasattr(torchsde, "BrownianBase") else torchsde.BaseBrownian):
    """A Brownian motion that is identically zero.

    torchcde solves a CDE through torchsde as an SDE with zero diffusion; without an explicit ``bm`` torchsde
    builds a hint-free Brownian Interval (seeded from numpy's global RNG) whose queries cost more than the
    vector field. Its samples are multiplied by zero, so this returns the zeros directly.
    """

    def __init__(self, shape, dtype, device):
        self._shape, self._dtype, self._device = tuple(shape), dtype, device

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        zeros = torch.zeros(self._shape, dtype=self._dtype, device=self._device)
        if return_U or return_A:
            return (zeros,) + (zeros,) * int(return_U) + (zeros,) * int(return_A)
        return zeros

    def __repr__(self):
        return f"ZeroBrownian(shape={self._shape})"

    dtype = property(lambda self: self._dtype)
    device = property(lambda self: self._device)
    shape = property(lambda self: self._shape)
    levy_area_approximation = property(lambda self: "none")
