"""On a CUDA device (skipped without one; CI has none, `scripts/bench_gpu.sh`'s machine runs them): the fast
backend gives the same loss and gradients as torchsde there and as itself on the CPU, Lightning trains on
the GPU, and CUDA-graph compile modes are refused with the fix. The backends are compared on the same initial
noise and Brownian increments, drawn on the CPU and moved."""
import pytest
import torch
from omegaconf import open_dict

from neuralsde.errors import ConfigError
from neuralsde.training import train
from tests.test_backends_agree import _loss, _on_backend, _same_noise, built

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _loss_and_grads(model, batch, backend):
    _on_backend(model, backend)
    loss = _loss(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    return [loss.detach().cpu()] + [g.cpu() for g in torch.autograd.grad(loss, params)]


def _rel(a, b):
    """Relative distance of the loss and all gradients, as one vector."""
    a, b = (torch.cat([x.double().flatten() for x in v]) for v in (a, b))
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 5e-3)])
def test_fast_backend_on_cuda_matches_torchsde_and_the_cpu(dtype, tol, tmp_path, monkeypatch):
    _, datamodule, model = built("ou_sdegan", tmp_path)
    batch = [x.to(dtype) for x in next(iter(datamodule.train_dataloader()))]
    model = model.to(dtype)
    _same_noise(monkeypatch, "cpu")
    on_cpu = _loss_and_grads(model, batch, "fast")
    model, batch = model.cuda(), [x.cuda() for x in batch]
    _same_noise(monkeypatch, "cuda")
    fast = _loss_and_grads(model, batch, "fast")
    ref = _loss_and_grads(model, batch, "torchsde")
    # float32: both adjoints rebuild the path backwards, each with its own rounding (measured 8e-4 on the CPU
    # between the backends; tests/test_backends_agree.py bounds each against exact gradients)
    assert _rel(fast, ref) < tol
    assert _rel(fast, on_cpu) < tol


def test_lightning_trains_on_the_gpu(tiny_cfg, tmp_path):
    cfg = tiny_cfg(["trainer=gpu"], steps=3)
    with open_dict(cfg):
        cfg.trainer.accelerator, cfg.trainer.devices = "gpu", 1
        cfg.test = False
    metrics = train(cfg)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert state["global_step"] > 0
    assert torch.isfinite(torch.as_tensor(metrics["train/d_loss"]))


def _ou_sdegan_on_cuda(tmp_path, backend):
    _, datamodule, model = built("ou_sdegan", tmp_path, f"solver.backend={backend}")
    return model.cuda(), [x.cuda() for x in next(iter(datamodule.train_dataloader()))]


def test_cuda_graph_compile_is_refused_with_the_fix(tmp_path):
    model, batch = _ou_sdegan_on_cuda(tmp_path, "torchsde")
    model.generator.sde.compile_fields("reduce-overhead")
    with pytest.raises(ConfigError, match=r"solver\.compile='reduce-overhead'.*solver\.compile=null"):
        _loss(model, batch)


def test_cuda_graph_fields_still_break_a_solver(tmp_path):
    # Why the refusal above exists: torch.compile's CUDA graphs, given each field call, overwrite outputs the
    # solver still holds. If this starts passing, a newer torch handles it and the refusal can go.
    model, batch = _ou_sdegan_on_cuda(tmp_path, "torchsde")
    for sde in (model.generator.sde, model.discriminator.func):
        nets = (sde.drift_net, sde.diffusion_net) if hasattr(sde, "drift_net") else (sde.net,)
        sde.__dict__["compiled_nets"] = tuple(torch.compile(n, mode="reduce-overhead", dynamic=False) for n in nets)
    with pytest.raises(RuntimeError, match="CUDAGraphs"):
        _loss(model, batch).backward()
