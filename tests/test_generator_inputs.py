"""Generator.forward called directly: a time tensor that is not (T,) is named, not flattened."""
from __future__ import annotations

import pytest
import torch

from neuralsde.errors import DataError
from sdegan.components.generator import Generator


def test_generator_refuses_time_values_that_are_not_one_dimensional():
    gen = Generator(1, t_size=8)
    assert gen(torch.arange(8.0), 3).shape == (3, 8, 2)
    for bad in (torch.arange(16.0).view(4, 4), torch.arange(8.0).view(8, 1), torch.zeros(1)):
        with pytest.raises(DataError, match=r"time_values has shape .*expected a 1-D tensor \(T,\)"):
            gen(bad, 3)
