"""A training step's solves and backward pass captured once as a CUDA graph and replayed (``model.cuda_graph``).

At the framework's sizes a GPU step is thousands of tiny kernels, and each costs a launch from Python whatever it
computes (bench row 7 on an H200: the default experiment ran no faster than on 2 CPU cores). A graph replays the
recorded kernels without Python or launch overhead. What is captured must be free of host reads and host-to-device
copies (``neuralsde.fast`` solves on Python time grids and cached index tensors for this) and of random draws: the
caller draws the noise eagerly and passes it in, so a replay computes exactly what the eager step would.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from neuralsde.errors import ConfigError


class GraphedStep:
    """``fn(*inputs) -> tuple of tensors`` (a forward and backward pass that leaves its gradients in ``params``'
    ``.grad``), run eagerly for ``warmup`` calls on a side stream, then captured and replayed: each later call
    copies its inputs into the captured ones and replays. A call whose input shapes differ from the captured ones
    (a short last batch) runs eagerly. After every call ``params``' ``.grad`` hold this call's gradients, not a sum:
    the graph owns its gradient buffers, and the eager calls start from ``None``.

    ``fn`` must read no tensor on the host, copy nothing from the host and draw no random numbers; the
    parameters must stay the same tensors (a model moved after capture would leave the graph writing elsewhere).
    The first replay is checked against an eager call on the same inputs (outputs and gradients within ``rtol``
    in norm): a capture that froze a value or lost a write fails loudly instead of training on wrong gradients.
    """

    rtol = 1e-4

    def __init__(self, fn: Callable, params: Iterable[torch.nn.Parameter], warmup: int = 3):
        self.fn, self.params, self.warmup = fn, list(params), int(warmup)
        self.graph = self.inputs = self.outputs = self.grads = self.side = None
        self.shapes, self.eager_calls = None, 0

    def _eager(self, inputs) -> tuple:
        for p in self.params:
            p.grad = None
        self.eager_calls += 1
        if self.side is None:
            self.side = torch.cuda.Stream(device=inputs[0].device)
        # a side stream, as PyTorch's capture recipe has it: the warm-up initialises what capture may not
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            out = self.fn(*inputs)
        torch.cuda.current_stream().wait_stream(self.side)
        return out

    def _capture(self, inputs) -> None:
        self.inputs = [x.detach().clone() for x in inputs]
        for p in self.params:
            p.grad = None  # the captured backward allocates them in the graph's own memory pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self.fn(*self.inputs)
        self.graph, self.grads = graph, [p.grad for p in self.params]

    @staticmethod
    def _require_cuda(inputs) -> None:
        if not inputs or any(not x.is_cuda for x in inputs):
            raise ConfigError("model.cuda_graph=true captures CUDA kernels, but the step's inputs are on "
                              f"{inputs[0].device if inputs else 'no device'}. Fix: train on a GPU (trainer=gpu), "
                              "or set model.cuda_graph=false.")

    def __call__(self, *inputs: torch.Tensor) -> tuple:
        self._require_cuda(inputs)
        shapes = tuple((x.shape, x.dtype) for x in inputs)
        first = self.graph is None
        if first:
            if self.eager_calls < self.warmup:
                return self._eager(inputs)
            self.shapes = shapes
            self._capture(inputs)
        elif shapes != self.shapes:
            return self._eager(inputs)
        for static, x in zip(self.inputs, inputs, strict=True):
            static.copy_(x)
        self.graph.replay()
        if first:
            self._check_against_eager(inputs)
        for p, g in zip(self.params, self.grads, strict=True):
            p.grad = g  # where the graph writes them, whatever was assigned since
        return self.outputs

    def _check_against_eager(self, inputs) -> None:
        replayed = [_flat(self.outputs), _flat(self.grads)]
        outputs = self._eager(inputs)
        eager = [_flat(outputs), _flat([p.grad for p in self.params])]
        # relative to each group's size, with a floor: a loss near zero is compared absolutely
        worst = max(float((a - b).norm() / max(float(b.norm()), 1e-3)) if a.shape == b.shape else float("inf")
                    for a, b in zip(replayed, eager, strict=True))
        if not worst <= self.rtol:
            raise RuntimeError(f"model.cuda_graph: the captured step's first replay differs from the eager step "
                               f"on the same inputs (largest relative difference {worst:.3g}, allowed {self.rtol:g}): "
                               "the capture lost something. Fix: set model.cuda_graph=false (and please report it).")


def _flat(tensors) -> torch.Tensor:
    """The tensors that are not None, flattened into one float64 vector."""
    parts = [t.detach().reshape(-1).double() for t in tensors if t is not None]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
