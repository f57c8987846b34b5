"""Fast path: lean reversible Heun with an exact reversible adjoint, numerically equal to torchsde/torchcde."""
from neuralsde.fast.brownian import GridBrownian, increments_from, sample_increments
from neuralsde.fast.cde import fast_cdeint, knot_derivatives
from neuralsde.fast.reversible_heun import fast_sdeint, solve, time_grid

__all__ = ["fast_sdeint", "fast_cdeint", "sample_increments", "GridBrownian", "increments_from", "solve",
           "time_grid", "knot_derivatives"]
