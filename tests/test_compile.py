"""solver.compile: torch.compile of the SDE-GAN's vector fields, behind a validated flag."""
import types

import pytest
import torch

from latent_sde.module import LatentSDE
from neuralsde.compiling import CUDA_GRAPH_MODES, compiled
from neuralsde.data.preprocessing import Normalizer
from neuralsde.errors import ConfigError
from neuralsde.fast import fast_sdeint, sample_increments
from neuralsde.fast.mlp import cde_mlp, generator_mlp
from neuralsde.solver import SolverConfig
from sdegan.module import SDEGAN

T, C = 9, 2
SIZES = dict(hidden_size=8, mlp_size=8, num_layers=1)


def make_sdegan(compile_mode=None, **kwargs):
    torch.manual_seed(0)
    return SDEGAN(torch.arange(T).float(), Normalizer(torch.zeros(C), torch.ones(C)),
                  SolverConfig(backend="fast", compile=compile_mode), generator=dict(SIZES, initial_noise_size=3,
                                                                                    noise_size=2),
                  discriminator=dict(SIZES), optimizer={"g_lr": 1e-3, "d_lr": 1e-3}, **kwargs)


def test_unknown_mode_names_option_and_fix():
    with pytest.raises(ConfigError, match=r"solver\.compile.*solver\.compile=null"):
        SolverConfig(compile="fastest")


def test_gradient_penalty_refuses_compiled_fields():
    with pytest.raises(ConfigError, match="double backward"):
        make_sdegan("default", lipschitz="gradient_penalty")


def test_latent_sde_says_compile_is_sdegan_only():
    with pytest.raises(ConfigError, match=r"solver\.compile"):
        LatentSDE(torch.arange(T).float(), Normalizer(torch.zeros(C), torch.ones(C)),
                  SolverConfig(compile="default"), encoder={"kind": "gru", "hidden_size": 8}, latent_size=3,
                  context_size=4, hidden_size=8, num_layers=1)


def test_compiled_fields_leave_state_dict_and_fused_path():
    eager, compiled = make_sdegan(), make_sdegan("default")
    assert list(eager.state_dict()) == list(compiled.state_dict())  # checkpoints are interchangeable
    assert generator_mlp(eager.generator.sde) is not None and cde_mlp(eager.discriminator.func) is not None
    # compiled fields are what the user asked for: the fused path (which bypasses the modules) steps aside
    assert generator_mlp(compiled.generator.sde) is None and cde_mlp(compiled.discriminator.func) is None
    assert compiled.averaged_generator.average.module.sde.compiled_nets is None  # the average stays eager


@pytest.mark.slow
def test_compiled_generator_equals_eager():
    eager, compiled = make_sdegan(), make_sdegan("default")
    y0 = torch.randn(16, SIZES["hidden_size"], requires_grad=True)
    ts = torch.arange(T).float()
    dW = sample_increments(T - 1, 16, 2, 1.0, generator=torch.Generator().manual_seed(1))
    outs = []
    for model in (eager, compiled):
        ys = fast_sdeint(model.generator.sde, y0, ts, 1.0, dW)
        grads = torch.autograd.grad(ys.square().sum(), (y0, *model.generator.sde.parameters()))
        outs.append((ys, grads))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_cuda_graph_modes_are_refused_on_cuda_inputs():
    # A stand-in for a CUDA tensor (CI has no GPU; tests/test_cuda.py checks the real thing on one).
    cuda_like = types.SimpleNamespace(is_cuda=True)
    for mode in CUDA_GRAPH_MODES:
        with pytest.raises(ConfigError, match=rf"solver\.compile='{mode}'.*CUDA graphs.*solver\.compile=null"):
            compiled(torch.nn.Linear(2, 2), mode)(cuda_like)
    assert compiled(torch.nn.Linear(2, 2), None) is None
