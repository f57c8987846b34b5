"""``torch.compile`` of vector-field networks, held outside the module tree.

A compiled network is kept as a plain attribute next to the eager one, so state dicts, checkpoints and weight
averaging see the same parameters and keys as without compilation.

The modes that capture CUDA graphs (``reduce-overhead``, ``max-autotune``) are refused on CUDA inputs: each
field call becomes one graph replay whose outputs the next replay overwrites, while a solver still holds the
previous step's values (its backward pass then fails; seen on an H200, ``tests/test_cuda.py`` re-checks it).
"""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.errors import bad_option

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compiled(net: nn.Module, mode: str | None):
    """``torch.compile(net, mode=mode)`` (static shapes), or None for ``mode=None``."""
    if mode is None:
        return None
    fn = torch.compile(net, mode=mode, dynamic=False)
    if mode not in CUDA_GRAPH_MODES:
        return fn

    def call(*args):
        if any(getattr(a, "is_cuda", False) for a in args):
            raise bad_option("solver.compile", mode, "null or default on a CUDA device: CUDA graphs of single "
                             "vector-field calls are overwritten by the next call while the solver still holds "
                             "the previous step", "set solver.compile=null (eager: no compile mode gained in "
                             "make bench, row 8) or solver.compile=default")
        return fn(*args)
    return call


def set_compiled(module: nn.Module, nets: tuple[nn.Module, ...], mode: str | None) -> None:
    """Give ``module`` compiled versions of ``nets`` as ``module.compiled_nets`` (None: eager)."""
    module.__dict__["compiled_nets"] = None if mode is None else tuple(compiled(n, mode) for n in nets)
