"""Scratch buffers of the fast solvers: reused per thread, never shared across inference mode."""
import torch

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
