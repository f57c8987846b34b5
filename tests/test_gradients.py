"""Adjoint gradients of the generator equal direct backpropagation for reversible Heun."""
import dataclasses

import pytest
import torch

from neuralsde.solver import SolverConfig
from sdegan.components.generator import Generator
from tests.autograd_graph import adjoint_nodes


def _grads(method: str, adjoint: bool, dtype: torch.dtype, t_size: int = 16, backend: str = "torchsde"):
    torch.manual_seed(0)
    solver = SolverConfig(method=method, adjoint=adjoint, backend=backend)
    gen = Generator(data_size=2, hidden_size=8, mlp_size=8, noise_size=3, t_size=t_size, solver=solver).to(dtype)
    out = gen(torch.arange(t_size, dtype=dtype), 8, generator=torch.Generator().manual_seed(1))
    # what is compared is an adjoint against direct backpropagation, not one of them twice
    assert bool(adjoint_nodes(out.grad_fn)) == adjoint
    loss = (out[..., 1:] ** 2).sum() + out[:, -1, 1:].sum()
    loss.backward()
    return out.detach(), [p.grad.clone() for p in gen.parameters()]


def _rel_err(a, b):
    num = sum(((x - y) ** 2).sum() for x, y in zip(a, b, strict=False)) ** 0.5
    den = sum((y ** 2).sum() for y in b) ** 0.5
    return float(num / den)


# Measured (2026-12-01): float64 1e-15 at 16 steps, 5e-14 at 64; float32 3e-7 and 2e-5. The bounds leave room for
# rounding only: a gradient of the wrong discretisation (midpoint's, below) is off by 5e-2.
@pytest.mark.parametrize("backend", ["torchsde", "fast"])
@pytest.mark.parametrize("dtype,t_size,bound", [(torch.float64, 16, 1e-12), (torch.float64, 64, 1e-12),
                                                (torch.float32, 16, 1e-5), (torch.float32, 64, 2e-4)])
def test_reversible_heun_adjoint_is_exact(dtype, t_size, bound, backend):
    out_a, grads_a = _grads("reversible_heun", True, dtype, t_size, backend)
    out_d, grads_d = _grads("reversible_heun", False, dtype, t_size, backend)
    assert torch.equal(out_a, out_d) or _rel_err([out_a], [out_d]) < bound
    assert _rel_err(grads_a, grads_d) < bound


@pytest.mark.parametrize("backend", ["torchsde", "fast"])
def test_midpoint_adjoint_is_only_approximate(backend):
    # The continuous adjoint of midpoint is not the gradient of its discretisation: measured 5e-2 here.
    _, grads_a = _grads("midpoint", True, torch.float64, backend=backend)
    _, grads_d = _grads("midpoint", False, torch.float64, backend=backend)
    err = _rel_err(grads_a, grads_d)
    print(f"midpoint adjoint vs direct ({backend}), relative gradient error: {err:.2e}")
    assert err > 1e-3


def test_solver_config_is_a_dataclass_of_plain_values():
    cfg = SolverConfig()
    assert dataclasses.asdict(cfg)["adjoint_method"] == "adjoint_reversible_heun"
