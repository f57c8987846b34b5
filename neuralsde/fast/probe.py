"""Whether the fused fast path may stand in for a module: its structure parsed into a ``FusedMLP``
(``mlp.generator_mlp`` / ``mlp.cde_mlp``), the adjoint's parameters all among the fused ones, and a probe evaluation
that agrees with the module's own forward; the verdict kept per module while its code and structure stay the same."""
from __future__ import annotations

import warnings
import weakref

import torch
from torch import nn

from neuralsde.fast.heads import plain
from neuralsde.fast.mlp import FusedMLP, cde_mlp, generator_mlp


def _select(mlp: FusedMLP, params) -> list[bool] | None:
    """Which of ``mlp.params`` get gradients; None if ``params`` holds a tensor the fused path cannot see."""
    ids = {id(p) for p in params if p.requires_grad}
    own = {id(p) for p in mlp.params}
    if not ids <= own:
        return None
    return [id(p) in ids for p in mlp.params]


def agrees(F0: torch.Tensor, ref: torch.Tensor, what: str) -> bool:
    """Whether a fused evaluation ``F0`` equals the module's ``ref`` to rounding; a warning where it does not."""
    tol = 1e3 * torch.finfo(ref.dtype).eps
    # equal_nan: parameters gone NaN (a diverging run) are not a code difference; the NaN loss check names them
    if torch.allclose(F0, ref, rtol=tol, atol=tol, equal_nan=True):
        return True
    # stacklevel 5: the line that called the public solve (fast_sdeint -> fused_sdeint -> fused_field -> here)
    warnings.warn(f"fused fast path disagrees with {what} on a probe; using the generic path", RuntimeWarning,
                  stacklevel=5)
    return False


PROBE_ROWS = 4  # the probe compares the fused net with the module on a few rows: it checks code, not data
# module -> (signature, FusedMLP): parsed and probed once while the module's code and structure stay the same
_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(module, like: torch.Tensor) -> tuple:
    """What the probe's verdict depends on: the class's field method, instance-level overrides (a patched
    ``_input``, ``forward``), the submodules and parameter tensors, and the dtype and device solved in."""
    method = getattr(type(module), "f_and_g", None) or type(module).forward
    own = tuple((k, id(v)) for k, v in vars(module).items() if callable(v) and not isinstance(v, nn.Module))
    return (method, own, tuple(map(id, module.modules())), tuple((id(p), p.shape) for p in module.parameters()),
            like.dtype, like.device)


def fused_field(module, params, times: torch.Tensor, probe_t: torch.Tensor, probe_k: int, z0: torch.Tensor):
    """``(FusedMLP, keep)`` standing in for sdegan's ``GeneratorSDE`` or a known CDE field (``mlp.cde_mlp``), prepared
    for the evaluation ``times``; None (generic path) unless its structure, the adjoint ``params`` and a probe
    evaluation at ``probe_t`` (time index ``probe_k``) all agree. The fused structure and the probe's verdict are
    kept per module while its signature holds (hooks are checked on every call)."""
    sde = hasattr(module, "f_and_g")
    sig = _signature(module, z0)
    hit = _FUSED.get(module)
    if hit is not None and hit[0] == sig and plain(module):
        mlp, probed = hit[1], True
    else:
        mlp, probed = generator_mlp(module) if sde else cde_mlp(module), False
    keep = None if mlp is None else _select(mlp, params)
    if keep is None:
        return None
    mlp.prepare((times * getattr(module, "time_scale", 1.0)).to(z0.dtype))
    if probed:
        return mlp, keep
    z = z0.detach()[:PROBE_ROWS]
    with torch.no_grad():  # guards against the module's forward differing from what is fused
        if sde:
            nfe = module.nfe
            f, g = module.f_and_g(probe_t, z)
            module.nfe = nfe  # callers count the solve's evaluations
            ref, what = torch.cat([f.unsqueeze(1), g.permute(0, 2, 1)], 1), "f_and_g"
        else:
            ref, what = module(probe_t, z).transpose(1, 2), f"{type(module).__name__}.forward"
        if not agrees(mlp.evaluate(z, probe_k), ref, what):
            _FUSED.pop(module, None)
            return None
    _FUSED[module] = (sig, mlp)
    return mlp, keep
