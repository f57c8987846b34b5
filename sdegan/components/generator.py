"""SDE-GAN generator: initial noise -> hidden state -> Stratonovich neural SDE -> linear readout."""
from __future__ import annotations

import torch
from torch import nn

from neuralsde.brownian import draw_entropy
from neuralsde.compiling import set_compiled
from neuralsde.errors import DataError
from neuralsde.nn import MLP, field_time_scale
from neuralsde.solver import SolverConfig, sdeint


class GeneratorSDE(nn.Module):
    """Drift and diffusion of the generator; Stratonovich, general noise.

    ``t`` (the solver's index time) is rescaled by ``time_scale`` before entering the networks.
    Submodules are not called ``f``/``g``: torchsde finds drift and diffusion by attribute name.
    """

    sde_type = "stratonovich"
    noise_type = "general"

    def __init__(self, hidden_size: int, noise_size: int, mlp_size: int, num_layers: int, time_scale: float = 1.0):
        super().__init__()
        self.hidden_size, self.noise_size, self.time_scale = hidden_size, noise_size, time_scale
        self.drift_net = MLP(1 + hidden_size, hidden_size, mlp_size, num_layers, tanh=True)
        self.diffusion_net = MLP(1 + hidden_size, hidden_size * noise_size, mlp_size, num_layers, tanh=True)
        self.nfe = 0  # drift-and-diffusion evaluations, for benchmarks
        self.compiled_nets = None  # (drift, diffusion) from torch.compile, see set_compiled

    def compile_fields(self, mode: str | None) -> None:
        """Evaluate drift and diffusion through ``torch.compile(mode=mode)`` (None: eager)."""
        set_compiled(self, (self.drift_net, self.diffusion_net), mode)

    def _input(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = (t * self.time_scale).to(y.dtype).expand(y.size(0), 1)
        return torch.cat([t, y], dim=1)

    def f_and_g(self, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` ``(batch, hidden)`` -> drift ``(batch, hidden)``, diffusion ``(batch, hidden, noise)``."""
        self.nfe += 1
        ty = self._input(t, y)
        drift, diffusion = self.compiled_nets or (self.drift_net, self.diffusion_net)
        return drift(ty), diffusion(ty).view(y.size(0), self.hidden_size, self.noise_size)

    def f(self, t, y):
        return self.drift_net(self._input(t, y))

    def g(self, t, y):
        return self.diffusion_net(self._input(t, y)).view(y.size(0), self.hidden_size, self.noise_size)


class Generator(nn.Module):
    """Maps initial noise and a Brownian motion to paths ``(batch, T, 1 + data_size)`` (time in channel 0)."""

    def __init__(self, data_size: int, initial_noise_size: int = 5, noise_size: int = 3, hidden_size: int = 16,
                 mlp_size: int = 16, num_layers: int = 1, t_size: int = 64, solver: SolverConfig | None = None,
                 initial_scale: float = 1.0, initial_mult: float = 1.0, field_mult: float = 1.0,
                 time_input: str = "unit"):
        super().__init__()
        self.initial_noise_size = initial_noise_size
        self.solver = solver or SolverConfig()
        self.initial = MLP(initial_noise_size, hidden_size, mlp_size, num_layers, tanh=False)
        self.sde = GeneratorSDE(hidden_size, noise_size, mlp_size, num_layers,
                                time_scale=field_time_scale(time_input, t_size, "model.generator.time_input"))
        self.readout = nn.Linear(hidden_size, data_size)
        if initial_scale != 1.0:
            # PyTorch's default initialisation leaves y0's spread at a few hundredths of the data's; with gradient
            # penalty a wider start keeps the t = 0 marginal's spread, under clipping it does not help (README,
            # "real-data SDE-GANs"). Scaling the last layer at the start widens it.
            with torch.no_grad():
                self.initial[-1].weight.mul_(initial_scale)
                self.initial[-1].bias.mul_(initial_scale)
        if initial_mult != 1.0 or field_mult != 1.0:
            # The paper's OU recipe (torchsde's examples/sde_gan.py, init_mult1=3 and init_mult2=0.5): every parameter
            # of the initial network (weights and biases of all layers) x initial_mult, of drift and diffusion x
            # field_mult, so that the untrained t = 0 law has about the spread of data normalised at t = 0.
            with torch.no_grad():
                for param in self.initial.parameters():
                    param.mul_(initial_mult)
                for param in self.sde.parameters():
                    param.mul_(field_mult)

    def draw(self, time_values: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
             solver: SolverConfig | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The random inputs of a solve, drawn as ``forward`` draws them: the initial noise ``(batch, noise)``
        (drawn on the CPU, so a seed gives the same paths on any device) and, on the fast backend, the Brownian
        increments ``(steps, batch, noise)`` (else None: torchsde samples its own)."""
        solver = solver or self.solver
        device, dtype = self.readout.weight.device, self.readout.weight.dtype
        noise = torch.randn(batch_size, self.initial_noise_size, generator=generator, dtype=dtype).to(device)
        if solver.backend != "fast":
            return noise, None
        from neuralsde.fast import sample_increments
        steps = solver.num_steps((0.0, time_values.numel() - 1.0))
        return noise, sample_increments(steps, batch_size, self.sde.noise_size, solver.dt, generator=generator,
                                        dtype=dtype, device=device)

    def forward(self, time_values: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
                solver: SolverConfig | None = None, draws: tuple | None = None) -> torch.Tensor:
        """time_values ``(T,)``: the time channel; the SDE is solved on the index grid ``0..T-1``. ``draws``: the
        random inputs (``draw``'s) to use instead of drawing them (the fast backend; reads no tensor on the host,
        so that a CUDA graph can capture it)."""
        if not isinstance(time_values, torch.Tensor) or time_values.ndim != 1 or time_values.numel() < 2:
            # a (T, 1) or (8, 8) tensor was flattened by .view(1, -1, 1) and solved over its element count
            shape = tuple(time_values.shape) if isinstance(time_values, torch.Tensor) else type(time_values).__name__
            raise DataError(f"time_values has shape {shape}: expected a 1-D tensor (T,) of two or more times. "
                            "Fix: pass the model's time channel, e.g. model.times.")
        solver = solver or self.solver
        device, dtype = self.readout.weight.device, self.readout.weight.dtype
        if draws is None:
            draws = self.draw(time_values, batch_size, generator, solver)
        noise, dw = draws
        y0 = self.initial(noise)
        if solver.backend == "fast":
            from neuralsde.fast import fast_sdeint, midpoint_sdeint
            ts = [float(k) for k in range(time_values.numel())]  # the index grid, as Python numbers
            solve = midpoint_sdeint if solver.method == "midpoint" else fast_sdeint
            hs = solve(self.sde, y0, ts, solver.dt, dw, adjoint=solver.adjoint).transpose(0, 1)
        else:
            if draws[1] is not None:
                raise ValueError("Brownian increments are drawn by torchsde on solver.backend=torchsde")
            ts = torch.arange(time_values.numel(), device=device, dtype=dtype)
            hs = sdeint(self.sde, y0, ts, solver, entropy=draw_entropy(generator),
                        adjoint_params=tuple(self.sde.parameters()))
        values = self.readout(hs)
        t = time_values.to(device=device, dtype=dtype).view(1, -1, 1).expand(batch_size, -1, 1)
        return torch.cat([t, values], dim=-1)
