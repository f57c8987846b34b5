"""Brownian increments on a fixed grid, and an adapter that serves them to torchsde."""
from __future__ import annotations

import math

import torch
import torchsde


def sample_increments(n_steps: int, batch: int, size: int, dt: float, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Increments ``W(t_{k+1}) - W(t_k)`` on a ``dt`` grid: ``(n_steps, batch, size)``, i.i.d. N(0, dt).

    One batched draw from ``generator`` (torch's global RNG if None). The draw happens on the generator's
    device and is then moved, so a CPU generator gives the same numbers whatever ``device`` is.
    """
    gen_device = generator.device if generator is not None else device
    noise = torch.randn(n_steps, batch, size, generator=generator, dtype=dtype, device=gen_device)
    return (noise * math.sqrt(dt)).to(device)


class GridBrownian(torchsde.BaseBrownian):
    """Brownian motion whose increments on the grid ``t0 + k * dt`` are the given ``dW`` ``(N, B, W)``.

    ``bm(ta, tb)`` returns ``W(tb) - W(ta)`` ``(B, W)`` for grid times ``ta <= tb``; ``bm(t)`` returns ``W(t)``
    with ``W(t0) = 0``. Lets torchsde solve with exactly the increments the fast solver uses.
    """

    def __init__(self, dW: torch.Tensor, t0: float, dt: float):
        super().__init__()
        if dW.dim() != 3:
            raise ValueError(f"dW must have shape (n_steps, batch, noise), got {tuple(dW.shape)}")
        self._dW, self._t0, self._dt = dW, float(t0), float(dt)

    def _index(self, t) -> int:
        k = round((float(t) - self._t0) / self._dt)
        if self._t0 + k * self._dt != float(t) or not 0 <= k <= self._dW.size(0):
            raise ValueError(f"time {float(t)} is not on the grid t0={self._t0} + k * {self._dt}, "
                             f"k = 0..{self._dW.size(0)}")
        return k

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_U or return_A:
            raise ValueError("GridBrownian has no Levy area (levy_area_approximation='none')")
        if tb is None:
            ta, tb = self._t0, ta
        ia, ib = self._index(ta), self._index(tb)
        if ib < ia:
            raise ValueError(f"need ta <= tb, got ta={float(ta)}, tb={float(tb)}")
        if ib == ia + 1:
            return self._dW[ia]  # the only query a fixed-step solver makes
        return self._dW[ia:ib].sum(dim=0)

    def __repr__(self):
        return f"GridBrownian(t0={self._t0}, dt={self._dt}, n_steps={self._dW.size(0)}, shape={tuple(self.shape)})"

    @property
    def dtype(self):
        return self._dW.dtype

    @property
    def device(self):
        return self._dW.device

    @property
    def shape(self):
        return self._dW.shape[1:]

    @property
    def levy_area_approximation(self):
        return "none"


def increments_from(bm, t0: float, dt: float, n_steps: int) -> torch.Tensor:
    """Query any torchsde Brownian motion on the grid ``t0 + k * dt``: ``(n_steps, B, W)``."""
    return torch.stack([bm(t0 + k * dt, t0 + (k + 1) * dt) for k in range(n_steps)])
