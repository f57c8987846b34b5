"""Which ``nn.Module``s the fused path can evaluate by hand: plain ``Linear``/activation MLPs, without hooks.

``parse`` reads an ``nn.Sequential`` MLP into its layers and activations; ``plain`` says whether calling a module's
weights directly is what calling the module does. ``_FWD``/``_BWD`` are the activations and their backward kernels
(both write into given buffers), shared by ``mlp.FusedMLP`` and ``latent``'s fused latent fields.
"""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.nn import LipSwish

# activation (writing into ``out=``) and its backward (writing a recorded cotangent via ``grad_input=``)
_FWD = {"tanh": torch.tanh, "silu": torch._C._nn.silu}
_BWD = {"tanh": torch.ops.aten.tanh_backward.grad_input, "silu": torch.ops.aten.silu_backward.grad_input}
_ACTIVATIONS = {LipSwish: ("silu", 0.909), nn.SiLU: ("silu", 1.0), nn.Tanh: ("tanh", 1.0)}

def parse(net) -> tuple[list[nn.Linear], list[tuple[str, float]], bool] | None:
    """``(linears, hidden activations (kind, scale), final tanh)`` or None if ``net`` is not a plain MLP."""
    if not isinstance(net, nn.Sequential) or type(net).forward is not nn.Sequential.forward:
        return None
    linears, acts, pending = [], [], None
    for m in net:
        if type(m) is nn.Linear and m.bias is not None:
            if linears and pending is None:
                return None  # two Linears in a row
            if pending is not None:
                acts.append(pending)
            linears.append(m)
            pending = None
        elif type(m) in _ACTIVATIONS and linears and pending is None:
            pending = _ACTIVATIONS[type(m)]
        else:
            return None
    if not linears or pending not in (None, ("tanh", 1.0)):
        return None
    return linears, acts, pending is not None


def plain(module: nn.Module) -> bool:
    """No hooks, parametrizations or compiled networks anywhere: calling the weights directly is what calling
    the module does (and what was asked for)."""
    from torch.nn.modules import module as m
    if m._global_forward_hooks or m._global_forward_pre_hooks or getattr(module, "compiled_nets", None):
        return False
    return not any(x._forward_hooks or x._forward_pre_hooks or hasattr(x, "parametrizations")
                   for x in module.modules())
