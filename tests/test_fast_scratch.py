"""Scratch buffers of the fast solvers: reused per thread, never shared across inference mode."""
import torch

from neuralsde.fast import scratch as scratch_module
from neuralsde.fast.scratch import MAX_BYTES, scratch


def test_reused_while_shape_and_dtype_match():
    like = torch.zeros(1)
    a = scratch("t.a", (4, 3), like)
    assert scratch("t.a", (4, 3), like) is a
    assert scratch("t.a", (4, 2), like) is not a
    assert scratch("t.a", (4, 2), like.double()).dtype == torch.float64


def test_inference_mode_gets_its_own_buffer():
    like = torch.zeros(1)
    with torch.inference_mode():
        inf = scratch("t.inf", (2, 2), like)
        assert inf.is_inference()
    normal = scratch("t.inf", (2, 2), like)
    assert not normal.is_inference()
    normal.add_(1)  # an inference tensor would refuse this outside inference mode


def test_large_buffers_are_not_kept():
    like = torch.zeros(1, dtype=torch.uint8)
    n = MAX_BYTES + 1
    assert scratch("t.big", (n,), like) is not scratch("t.big", (n,), like)


def test_alternating_shapes_keep_their_own_buffers(monkeypatch):
    # the generator's and the discriminator's solves alternate: neither should reallocate the other's buffer
    like = torch.zeros(1)
    g, d = scratch("t.alt", (128, 4), like), scratch("t.alt", (256, 2), like)
    assert scratch("t.alt", (128, 4), like) is g and scratch("t.alt", (256, 2), like) is d
    monkeypatch.setattr(scratch_module._local, "pool", {})
    monkeypatch.setattr(scratch_module, "MAX_BUFFERS", 2)
    a, b = scratch("t.a", (1,), like), scratch("t.b", (1,), like)
    assert scratch("t.a", (1,), like) is a  # a is now the most recently used
    scratch("t.c", (1,), like)  # evicts b, the least recently used
    assert len(scratch_module._local.pool) == 2
    assert scratch("t.a", (1,), like) is a and scratch("t.b", (1,), like) is not b


def test_cached_index_and_grid_tensors_are_normal_tensors_even_when_first_made_in_inference_mode(monkeypatch):
    # kept for every later solve: an inference tensor could not be saved for backward by a training solve
    from neuralsde.fast import grids
    from neuralsde.fast.grids import time_grid
    from neuralsde.fast.scratch import index_tensor
    monkeypatch.setattr(grids, "_GRIDS", {})  # empty, whatever earlier tests built: made here, in inference mode
    monkeypatch.setattr(scratch_module, "_INDEX", {})
    with torch.inference_mode():
        index = index_tensor((3, 1, 4, 1, 5, 9, 2, 6), torch.device("cpu"))
        grid, _ = time_grid([0.0, 0.25, 43.0], 0.25, like=torch.zeros(1))
    assert not index.is_inference() and not grid.is_inference()
