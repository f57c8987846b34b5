"""``model.cuda_graph``: the SDE-GAN step's solves and backward pass captured as one CUDA graph.

On the CPU: what is captured reads no tensor on the host and copies nothing from it (a capture would fail, or
worse, freeze a value), it computes exactly the eager step from the same noise, every combination it cannot
capture is refused with the fix, and ``GraphedStep``'s bookkeeping (warm-up, capture, inputs copied in, gradients
handed back after an eager short batch, the first replay checked against the eager step) holds with CPU
stand-ins for the graph and streams. On a CUDA device (skipped without one): graphed training follows eager training,
replays see new data and noise, and eager solves between replays leave them alone.
"""
import contextlib
import re
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from neuralsde.cuda_graphs import GraphedStep
from neuralsde.errors import ConfigError
from tests.test_backends_agree import built

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# What a captured region may not call: host reads of tensor values and tensors built from Python data.
_HOST = {torch.Tensor: ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"),
         torch: ("tensor", "as_tensor")}


@contextlib.contextmanager
def no_host_transfers():
    """Raise on any of ``_HOST`` from any thread (the autograd engine runs backward passes on its own)."""
    seen, saved = [], []

    def wrap(owner, name, fn):
        def guarded(*args, **kwargs):
            if not getattr(local, "inside", False):
                seen.append(name)
            local.inside = True  # torch calls some of these from within others: count the outermost only
            try:
                return fn(*args, **kwargs)
            finally:
                local.inside = False
        return guarded

    local = threading.local()
    for owner, names in _HOST.items():
        for name in names:
            fn = getattr(owner, name)
            saved.append((owner, name, fn))
            setattr(owner, name, wrap(owner, name, fn))
    try:
        yield seen
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def _model(tmp_path, method="reversible_heun", *overrides):
    _, datamodule, model = built("ou_sdegan", tmp_path, f"solver.method={method}", *overrides)
    return model, next(iter(datamodule.train_dataloader()))[1]


class _ReadsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * float(g.sum())  # a host read inside a backward pass


def test_the_guard_sees_host_reads_in_backward_passes():
    x = torch.ones(3, requires_grad=True)
    with no_host_transfers() as seen:
        _ReadsInBackward.apply(x).sum().backward()
    assert seen == ["__float__"]


@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
def test_the_captured_step_reads_nothing_on_the_host(method, tmp_path):
    model, real = _model(tmp_path, method)
    draws = model.generator.draw(model.times, real.size(0))
    model._graph_step(real, *draws)  # the first solve fills the caches: fused networks, grids, index tensors
    with no_host_transfers() as seen:
        d_loss, _ = model._graph_step(real, *draws)
    assert seen == []
    assert torch.isfinite(d_loss)
    # nor do the eager step's solves (its loss check reads, outside them)
    with no_host_transfers() as seen:
        model.losses(real)
    assert seen == []


@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
def test_the_captured_step_computes_the_eager_step(method, tmp_path):
    model, real = _model(tmp_path, method)
    params = model.parameters_with_grads()
    torch.manual_seed(5)
    loss = model.losses(real)[0]
    loss.backward()
    model._negate_generator_grads()
    eager = [loss.detach()] + [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    torch.manual_seed(5)
    graphed = [model._graph_step(real, *model.generator.draw(model.times, real.size(0)))[0]]
    graphed += [p.grad for p in params]
    for a, b in zip(graphed, eager, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("override,key", [
    ("model.lipschitz=gradient_penalty", "model.lipschitz"),
    ("model.update=alternating", "model.update"),
    ("solver.backend=torchsde", "solver.backend"),
    ("solver.compile=default", "solver.compile"),
    ("model.discriminator.interpolation=hermite", "model.discriminator.interpolation"),
])
@pytest.mark.filterwarnings("ignore:model.discriminator.interpolation=hermite gives")  # at dt = 1: expected here
def test_what_cannot_be_captured_is_refused_with_the_fix(override, key, tmp_path):
    with pytest.raises(ConfigError, match=rf"{key}=.*model\.cuda_graph=true.*set model\.cuda_graph=false"):
        _model(tmp_path, "reversible_heun", "model.cuda_graph=true", override)


def test_a_cpu_run_is_refused_with_the_fix(tmp_path):
    model, real = _model(tmp_path, "reversible_heun", "model.cuda_graph=true")
    model._trainer = SimpleNamespace(precision="16-mixed", world_size=1)
    with pytest.raises(ConfigError, match=r"trainer\.precision='16-mixed'.*not loss-scaled.*precision=32-true"):
        model.on_fit_start()
    model._trainer = SimpleNamespace(precision="32-true", world_size=2)
    with pytest.raises(ConfigError, match=r"more than one process.*model\.cuda_graph=false"):
        model.on_fit_start()
    model._trainer = SimpleNamespace(precision="32-true", world_size=1)
    with pytest.raises(ConfigError, match=r"model\.cuda_graph=True.*false on a cpu device.*trainer=gpu"):
        model.on_fit_start()
    with pytest.raises(ConfigError, match=r"inputs are on cpu.*trainer=gpu.*model\.cuda_graph=false"):
        GraphedStep(model._graph_step, model.parameters_with_grads())(real, *model.generator.draw(model.times, 2))


# ------------------------------------------------------------------ GraphedStep's bookkeeping, on the CPU

class _FakeGraph:
    """``torch.cuda.CUDAGraph`` on the CPU, with a replay's memory semantics: the captured function runs again
    and its results are written into the tensors the capture returned (outputs and gradients). ``lossy``: the
    replay loses the gradients' writes, as a capture that missed them would."""

    lossy = False

    def replay(self):
        step = self.step
        if self.lossy:
            for g in step.grads:
                g.zero_()
            return
        for p in step.params:
            p.grad = None
        for dst, src in zip(step.outputs, step.fn(*step.inputs), strict=True):
            dst.copy_(src)
        for g, p in zip(step.grads, step.params, strict=True):
            g.copy_(p.grad)


class _FakeStream:
    def __init__(self, device=None):
        pass

    def wait_stream(self, other):
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    """GraphedStep's CUDA calls replaced by CPU stand-ins: returns this test's own ``_FakeGraph`` class."""
    graph_class = type("FakeGraph", (_FakeGraph,), {})  # a test may set ``lossy`` on it
    capture = GraphedStep._capture

    def capture_and_link(self, inputs):
        capture(self, inputs)
        self.graph.step = self
    monkeypatch.setattr(GraphedStep, "_capture", capture_and_link)
    monkeypatch.setattr(GraphedStep, "_require_cuda", staticmethod(lambda inputs: None))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", graph_class)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream())
    return graph_class


def _train(model, batches, seed):
    """The module's own training step (Lightning's services shimmed, as the benchmarks do) over ``batches``, with
    an eager sampling solve (its own scratch buffers and batch size) after each step; the logged losses."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from _bench_utils import bare_optimizers, sdegan_step

    opts = bare_optimizers(model)
    torch.manual_seed(seed)
    losses, logged = [], {}
    model.log_step = lambda metrics, **kw: logged.update(metrics)
    for real in batches:
        sdegan_step(model, opts, real)
        losses.append(float(logged["train/d_loss"]))
        with torch.no_grad():
            model.sample(37, generator=torch.Generator().manual_seed(1))
    return losses


def _eager_and_graphed(tmp_path, method="reversible_heun", device="cpu"):
    """Training of the same model eager and through GraphedStep: 3 warm-up steps, the capture, replays, a short
    batch (eager) between replays, a sampling solve after every step. ``[(losses, final parameters)]`` of each,
    and the GraphedStep."""
    runs = []
    for graphed in (False, True):
        model, real = _model(tmp_path, method)
        model, real = model.to(device), real.to(device)
        model.cuda_graph = graphed
        batches = [real.roll(k, 0) for k in range(8)]
        batches.insert(5, batches[4][:-3])
        losses = _train(model, batches, seed=3)
        runs.append((losses, [p.detach().clone() for p in model.parameters_with_grads()]))
    return runs, model._graphed


def test_graphed_step_bookkeeping_follows_eager_training(fake_cuda, tmp_path):
    # With replays that compute what a graph would, training is the eager training exactly: the replays see each
    # new batch and noise, gradients come back to the parameters after the eager short batch, outputs are copied.
    ((eager_losses, eager_params), (graph_losses, graph_params)), graphed = _eager_and_graphed(tmp_path)
    assert graphed.graph is not None and graphed.eager_calls == 5  # 3 warm-ups, the replay's check, the short batch
    assert len(set(graph_losses[3:])) == len(graph_losses) - 3
    assert graph_losses == eager_losses
    for a, b in zip(graph_params, eager_params, strict=True):
        assert torch.equal(a, b)


def test_a_capture_that_loses_writes_fails_on_its_first_replay(fake_cuda, tmp_path):
    fake_cuda.lossy = True
    with pytest.raises(RuntimeError, match=r"first replay differs from the eager step.*model\.cuda_graph=false"):
        _eager_and_graphed(tmp_path)


def test_the_benchmark_graph_rows_run_with_stand_ins(fake_cuda, tmp_path):
    # Bench row 8's graph rows only run on a GPU: run them here with the stand-ins, so that the first GPU session
    # measures instead of debugging them.
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_fast
    from _bench_utils import Ctx, build_sdegan

    ctx = Ctx(device=torch.device("cpu"), quick=True, tmp=tmp_path)
    overrides = ["data.source.n_paths=256", "data.batch_size=32"]
    ref, real = build_sdegan(ctx.device, overrides, {"backend": "fast"})
    rows = bench_fast._graph_rows(ctx, overrides, ref, real, require_cuda=False)
    assert len(rows) == 2
    for row in rows:
        assert re.fullmatch(r"\d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\)", row["result"]), row
    assert re.search(r"one more solver step, both graphed: \d+\.\d\dx \(", rows[1]["note"]), rows[1]["note"]


# ------------------------------------------------------------------------------------------------ on a GPU

@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
def test_graphed_training_follows_eager_training(method, tmp_path):
    # the same run as the CPU bookkeeping test, with a real capture: the graph's memory and gradient buffers must
    # be its own through replays, an eager short batch and sampling
    ((eager_losses, eager_params), (graph_losses, graph_params)), graphed = _eager_and_graphed(tmp_path, method, "cuda")
    assert graphed.graph is not None
    assert len(set(graph_losses[3:])) == len(graph_losses) - 3  # every replay saw its own batch and noise
    torch.testing.assert_close(graph_losses, eager_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(graph_params, eager_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@cuda
@pytest.mark.gpu
def test_train_py_runs_graphed_on_the_gpu(tiny_cfg, tmp_path):
    from omegaconf import open_dict

    from neuralsde.training import train
    cfg = tiny_cfg(["model.cuda_graph=true"], steps=8)  # warm-up, capture, replays, epochs ending in short batches
    with open_dict(cfg):
        cfg.trainer.accelerator, cfg.trainer.devices = "gpu", 1
        cfg.test = False
    metrics = train(cfg)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert int(state["state_dict"]["train_step"]) == 8
    assert torch.isfinite(torch.as_tensor(metrics["train/d_loss"]))
