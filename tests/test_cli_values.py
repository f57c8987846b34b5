"""Command-line values that used to end in a raw OmegaConf/TypeError traceback or were silently ignored."""
from __future__ import annotations

import pytest

from neuralsde.errors import ConfigError
from neuralsde.solver import SolverConfig


@pytest.mark.parametrize("options, needle", [
    ({"dt": "abc"}, r"solver.dt='abc' is not valid: expected a positive number"),
    ({"dt": True}, r"solver.dt=True is not valid"),
    ({"adjoint": "abc"}, r"solver.adjoint='abc' is not valid: expected true or false"),
])
def test_solver_values_of_the_wrong_type(options, needle):
    with pytest.raises(ConfigError, match=needle):
        SolverConfig(**options)
