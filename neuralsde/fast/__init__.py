"""Fast path: lean reversible Heun (exact reversible adjoint) and midpoint (torchsde's continuous adjoint),
numerically equal to torchsde/torchcde."""
from neuralsde.fast.brownian import GridBrownian, increments_from, sample_increments
from neuralsde.fast.cde import fast_cdeint
from neuralsde.fast.grids import time_grid
from neuralsde.fast.midpoint import midpoint_cdeint, midpoint_sdeint
from neuralsde.fast.reversible_heun import fast_sdeint, solve
from neuralsde.fast.slopes import knot_derivatives

__all__ = ["fast_sdeint", "fast_cdeint", "sample_increments", "GridBrownian", "increments_from", "solve",
           "time_grid", "knot_derivatives", "midpoint_sdeint", "midpoint_cdeint"]
