"""Which latent SDE fields ``latent.FusedLatent`` stands in for: a plain ``LatentSDEFunc`` whose posterior and prior
drifts are SiLU / LipSwish MLPs of one structure, with a ``DiagonalDiffusion`` and a context ``(B, T, C)``."""
from __future__ import annotations

import torch

from neuralsde.fast.heads import parse, plain

DIFFUSION_LIPSWISH = 0.909  # DiagonalDiffusion's activation scale (written in its forward; the probe checks it)


def _hidden_scales(acts) -> list[float] | None:
    """The scale of each hidden activation if all are (scaled) SiLU, as LipSwish is; else None."""
    if any(kind != "silu" for kind, _ in acts):
        return None
    return [scale for _, scale in acts]


def supported(sde) -> tuple | None:
    """``(posterior linears, prior linears, activation scales)`` if ``sde`` is a plain ``LatentSDEFunc``."""
    if type(sde).__qualname__ != "LatentSDEFunc" or not plain(sde):
        return None
    if any(name in vars(sde) for name in ("f", "g", "h", "_time", "_context_at", "forward")):
        return None  # an instance override (a test sets f = h): the module path sees it, this would not
    diffusion = getattr(sde, "diffusion", None)
    if type(diffusion).__qualname__ != "DiagonalDiffusion" or "forward" in vars(diffusion):
        return None
    post, prior = parse(sde.posterior_net), parse(sde.prior_net)
    if post is None or prior is None or post[2] or prior[2] or len(post[0]) != len(prior[0]) or len(post[0]) < 2:
        return None
    scales, prior_scales = _hidden_scales(post[1]), _hidden_scales(prior[1])
    if scales is None or scales != prior_scales:
        return None
    if any(a.out_features != b.out_features for a, b in zip(post[0][:-1], prior[0][:-1], strict=True)):
        return None
    context = getattr(sde, "context", None)
    if not isinstance(context, torch.Tensor) or context.dim() != 3:
        return None
    return post[0], prior[0], scales
