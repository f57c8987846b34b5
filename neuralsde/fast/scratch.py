"""Reusable scratch buffers for the fast solvers' internal temporaries.

Large fresh allocations are expensive on CPU: each one is new pages that the kernel must fault in and zero.
Temporaries that never leave a solve (per-chunk outputs, cotangent rings; the parameter-gradient records are
kept by each ``FusedMLP`` itself) are therefore kept per thread and reused: one per name, shape,
dtype and device (the generator's and the discriminator's solves alternate and keep their own). Only buffers up
to ``MAX_BYTES`` are kept, and at most ``MAX_BUFFERS`` of them (least recently used dropped first), so long
solves and changing batch sizes do not pin memory.

While a CUDA graph is being captured (``neuralsde.cuda_graphs``) every buffer is fresh: it then comes from the
graph's private memory pool and lives as long as the graph, whereas a pooled buffer could be dropped and its
memory handed to another tensor while the graph still writes to it.
"""
from __future__ import annotations

import threading

import torch

MAX_BYTES = 64 * 2 ** 20
MAX_BUFFERS = 64
_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` (dtype and device of ``like``), reused across calls with ``name``.

    The caller must be done with the previous buffer of that name: solves run one at a time per thread.
    """
    if like.is_cuda and torch.cuda.is_current_stream_capturing():
        return like.new_empty(shape)
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    # inference tensors cannot be written outside inference mode, so that mode is part of the key
    key = (name, tuple(shape), like.dtype, like.device, torch.is_inference_mode_enabled())
    buf = pool.pop(key, None)
    if buf is None:
        buf = like.new_empty(shape)
        if buf.numel() * buf.element_size() > MAX_BYTES:
            return buf
        if len(pool) >= MAX_BUFFERS:
            del pool[next(iter(pool))]  # dicts keep insertion order: the least recently used goes
    pool[key] = buf  # re-inserted: now the most recently used
    return buf


_INDEX: dict = {}  # never pruned: a captured CUDA graph may read any of them (a handful per series length)


def index_tensor(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``torch.as_tensor(values, device=device)`` (int64), made once per ``values`` and device: building it from
    Python data is a host-to-device copy on a GPU, which a CUDA graph cannot capture. Do not write to it."""
    key = (values, device)
    t = _INDEX.get(key)
    if t is None:
        with torch.inference_mode(False):  # as the grids: kept for later training solves, which save it for backward
            t = _INDEX[key] = torch.as_tensor(values, dtype=torch.int64, device=device)
    return t
