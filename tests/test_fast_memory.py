"""The fast backend's adjoints hold memory that grows with the steps only as the paths do (outputs, noise, controls,
context), not per field evaluation: peak bytes allocated (torch's profiler, CPU) at 64 against 512 steps."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from latent_sde.components.sdes import LatentSDEFunc
from neuralsde.fast import fast_cdeint, fast_sdeint, sample_increments
from neuralsde.fast import scratch as scratch_module
from neuralsde.fast.logqp import fast_sdeint_logqp
from neuralsde.fast.midpoint import midpoint_cdeint, midpoint_sdeint
from sdegan.components.discriminator import DiscriminatorCDE
from sdegan.components.generator import GeneratorSDE

B, H = 16, 32


def peak_bytes(run) -> int:
    """Most bytes torch held at once while ``run()`` ran (allocations and frees replayed in order), reused scratch
    buffers included: the pool is emptied first."""
    scratch_module._local.pool = {}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()
        peak = max(peak, held)
    return peak


def generator(n, method):
    torch.manual_seed(0)
    field = GeneratorSDE(H, 3, H, 1, 1.0 / n)
    y0 = torch.randn(B, H, requires_grad=True)
    dW = sample_increments(n, B, 3, 1.0, torch.Generator().manual_seed(1))
    solve = fast_sdeint if method == "reversible_heun" else midpoint_sdeint

    def run():
        solve(field, y0, [float(k) for k in range(n + 1)], 1.0, dW).sum().backward()
    return run, (n + 1) * B * H * 4 + dW.nbytes  # the output path and the noise


def discriminator(n, method):
    torch.manual_seed(0)
    func = DiscriminatorCDE(2, H, H, 1, 1.0 / n)
    X = torch.randn(B, n + 1, 3).cumsum(1).requires_grad_()
    z0 = torch.randn(B, H, requires_grad=True)
    solve = fast_cdeint if method == "reversible_heun" else midpoint_cdeint

    def run():
        solve(func, z0, X, None, 1.0)[-1].sum().backward()
    return run, X.nbytes  # the control path


def latent(n, method):
    torch.manual_seed(0)
    d, c = 4, 16
    sde = LatentSDEFunc(d, c, H, 1, 16, 1e-3, 1.0, n + 1)
    context = torch.randn(B, n + 1, c, requires_grad=True)
    sde.set_context(context)
    y0 = torch.randn(B, d, requires_grad=True)
    dW = sample_increments(n, B, d + 1, 1.0, torch.Generator().manual_seed(1))

    def run():
        ys, log_ratio = fast_sdeint_logqp(sde, y0, torch.arange(n + 1.0), 1.0, dW, method=method,
                                          adjoint_params=(*sde.parameters(), context))
        (ys.sum() + log_ratio.sum()).backward()
    return run, (n + 1) * B * (d + 1) * 4 + context.nbytes + dW.nbytes  # outputs, context, noise


# How many times its paths' growth a solve may add: the outputs, their cotangents and a few scaled copies of the noise
# or control. The CDE's midpoint holds its thin control (3 channels here) at three times per step, scaled and
# unscaled, and one first-layer bias per evaluation (4 per step, not per batch row). One more (batch, hidden) buffer
# per step or evaluation would exceed these (the latent field's first-layer biases made its midpoint 15x, its
# reversible Heun 3.9x).
BOUNDS = {"generator": 4, "discriminator": 5, "latent": 3}
MIDPOINT_CDE = 10


@pytest.mark.parametrize("method", ["reversible_heun", "midpoint"])
@pytest.mark.parametrize("solve", [generator, discriminator, latent])
def test_adjoint_memory_grows_with_the_paths_only(solve, method):
    (short, short_path), (long, long_path) = solve(64, method), solve(512, method)  # record chunks full at both
    short_peak, long_peak = peak_bytes(short), peak_bytes(long)
    bound = MIDPOINT_CDE if (solve, method) == (discriminator, "midpoint") else BOUNDS[solve.__name__]
    assert long_peak - short_peak < bound * (long_path - short_path), (long_peak - short_peak, long_path - short_path)
    # and the measurement sees the paths themselves (measured 1.6x to 7.9x): a profiler that recorded no memory
    # events would pass the bound above with 0 bytes
    assert long_peak - short_peak > long_path - short_path
