"""Chunk buffers for recorded evaluations: parameter gradients are summed one chunk at a time, so a backward pass
holds ``O(chunk)`` records, not ``O(steps)``; ``chunk_size`` picks how many slots fit in the CPU's cache."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from neuralsde.fast.mlp import FusedMLP

CACHE_BYTES = 2 ** 22  # chunk buffers this small stay in the CPU's cache while a chunk is written and summed


def chunk_size(bytes_per_slot: int, points: int, fixed: int | None = None, budget: int = CACHE_BYTES) -> int:
    """Slots per chunk: ``fixed``, else as many as fit in ``budget`` bytes (2 to 64), at most ``points``."""
    k = fixed if fixed is not None else max(2, min(64, budget // max(bytes_per_slot, 1)))
    return max(1, min(points, k))


class Records:
    """Chunk buffers of recorded evaluations: layer inputs and outputs, activations and cotangents.

    Each buffer is ``(size + 1, B, width)``: ``size`` slots of a chunk, and one more (``cache``) for an
    evaluation whose VJP is taken to the state only (its cotangents are never summed). The per-slot views are
    made once, as one tuple per slot (indexing and attribute lookups cost as much as a small op). A
    ``FusedMLP`` keeps its records per shape, so they are allocated once and shared with nothing else.
    """

    def __init__(self, mlp: FusedMLP, batch: int, like: torch.Tensor, size: int):
        widths = [mlp.wz.size(0)] + [w.size(0) for w in mlp.ws]  # outputs of layers 0..L-1

        def buf(width):
            return like.new_empty(size + 1, batch, width)
        self.size, self.times = size, [0] * (size + 1)
        self.z = buf(mlp.wz.size(1))
        self.h = [buf(w) for w in widths[:-1]]  # hidden pre-activations
        self.a = [buf(w) for w in widths[:-1]]  # hidden activations
        self.out = buf(widths[-1])
        self.d = [buf(w) for w in widths]  # cotangents of the layer outputs
        # The last layer's output goes straight to ``out`` unless a final tanh follows (then its pre-activation
        # is needed only until the sigmoid has read it: one shared buffer).
        pre = like.new_empty(batch, widths[-1]) if mlp.final_tanh else None
        outs = self.out.unbind(0)
        self.slots = [(z, [h[s] for h in self.h] + [pre if mlp.final_tanh else outs[s]], [a[s] for a in self.a],
                       outs[s], [d[s] for d in self.d], outs[s].view(batch, mlp.channels, -1))
                      for s, z in enumerate(self.z.unbind(0))]
        self.cache = size
