"""Reusable scratch buffers for the fast solvers' internal temporaries.

Large fresh allocations are expensive on CPU: each one is new pages that the kernel must fault in and zero
(measured here: records of a batch-1024 solve took about twice as long to write as to compute). Buffers that
never leave a solve (records, per-chunk outputs) are therefore kept per thread and reused while their shape,
dtype and device stay the same. Only buffers up to ``MAX_BYTES`` are kept, so long solves do not pin memory.
"""
from __future__ import annotations

import threading

import torch

MAX_BYTES = 64 * 2 ** 20
_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` (dtype and device of ``like``), reused across calls with ``name``.

    The caller must be done with the previous buffer of that name: solves run one at a time per thread.
    """
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    name = (name, torch.is_inference_mode_enabled())  # inference tensors cannot be written outside that mode
    buf = pool.get(name)
    if buf is not None and buf.shape == shape and buf.dtype == like.dtype and buf.device == like.device:
        return buf
    buf = like.new_empty(shape)
    if buf.numel() * buf.element_size() <= MAX_BYTES:
        pool[name] = buf
    else:
        pool.pop(name, None)
    return buf
