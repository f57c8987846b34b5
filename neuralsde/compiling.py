"""``torch.compile`` of vector-field networks, held outside the module tree.

A compiled network is kept as a plain attribute next to the eager one, so state dicts, checkpoints and weight
averaging see the same parameters and keys as without compilation.
"""
from __future__ import annotations

import torch
from torch import nn


def compiled(net: nn.Module, mode: str | None):
    """``torch.compile(net, mode=mode)`` (static shapes), or None for ``mode=None``."""
    return None if mode is None else torch.compile(net, mode=mode, dynamic=False)


def set_compiled(module: nn.Module, nets: tuple[nn.Module, ...], mode: str | None) -> None:
    """Give ``module`` compiled versions of ``nets`` as ``module.compiled_nets`` (None: eager)."""
    module.__dict__["compiled_nets"] = None if mode is None else tuple(compiled(n, mode) for n in nets)
