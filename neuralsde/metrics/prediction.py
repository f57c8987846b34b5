"""Train-on-synthetic, test-on-real (TSTR) forecasting, with train-on-real (TRTR) as the reference.

A seq-to-seq forecaster reads the first part of each path and predicts the data channels over the last
``horizon`` fraction of the times. Trained on generated paths and scored on real test paths it gives
``tstr_loss``; the same forecaster trained on real training paths gives ``trtr_loss``. Good generated data
makes the two close.
"""

from __future__ import annotations

import torch
from torch import nn

from neuralsde.errors import ConfigError, bad_option
from neuralsde.metrics._paths import (
    check_paths,
    check_same_grid,
    fill_missing,
    make_generator,
    rescale_time,
    seed_int,
    seeded,
    time_map,
)


class Seq2SeqForecaster(nn.Module):
    """GRU encoder over the context; GRU decoder driven by the target times; linear head to the data.

    The decoder starts from the encoder's last state and reads, at each target time, that time and the
    last observed values, so it knows how far ahead it is forecasting.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.encoder = nn.GRU(channels, hidden, batch_first=True)
        self.decoder = nn.GRU(channels, hidden, batch_first=True)
        self.head = nn.Linear(hidden, channels - 1)

    def forward(self, context: torch.Tensor, target_times: torch.Tensor) -> torch.Tensor:
        """context ``(batch, n_ctx, channels)`` NaN-free, target_times ``(batch, n_out)`` -> ``(batch, n_out,
        channels - 1)`` predicted data channels."""
        _, h = self.encoder(context)
        last = context[:, -1:, 1:].expand(-1, target_times.shape[1], -1)
        out, _ = self.decoder(torch.cat([target_times.unsqueeze(-1), last], dim=-1), h)
        return self.head(out)


def split_context(x: torch.Tensor, horizon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(batch, time, channels)`` into context ``(batch, n_ctx, channels)`` and target
    ``(batch, time - n_ctx, channels)`` with ``n_ctx = round(time * (1 - horizon))``, at least 1 of each.

    The context is filled on its own (``torchcde.linear_interpolation_coeffs``, ends back/forward-filled),
    so no value from the target part leaks into it; the target keeps its NaN for the loss mask.
    """
    length = x.shape[1]
    n_ctx = min(max(round(length * (1 - horizon)), 1), length - 1)
    return fill_missing(x[:, :n_ctx]), x[:, n_ctx:]


def _masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # NaN targets (missing real values) are left out of the mean.
    observed = ~torch.isnan(target)
    return (pred - torch.nan_to_num(target)).pow(2)[observed].mean()


def train_forecaster(
    train: torch.Tensor,
    *,
    horizon: float = 0.5,
    hidden_size: int = 32,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-2,
    seed: int = 0,
) -> Seq2SeqForecaster:
    """Fit a forecaster on ``train`` ``(batch, time, channels)`` (time already on the shared scale)."""
    context, target = split_context(train, horizon)
    with seeded(seed):
        model = Seq2SeqForecaster(train.shape[-1], hidden_size)
    model = model.to(train.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    gen = make_generator(seed, "cpu")
    for _ in range(epochs):
        for idx in torch.randperm(len(train), generator=gen).split(batch_size):
            idx = idx.to(train.device)
            tgt = target[idx]
            if torch.isnan(tgt[..., 1:]).all():
                continue
            loss = _masked_mse(model(context[idx], tgt[..., 0]), tgt[..., 1:])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def forecast_mse(model: Seq2SeqForecaster, test: torch.Tensor, horizon: float = 0.5) -> float:
    """Mean squared error over observed target values of ``test`` ``(batch, time, channels)``."""
    context, target = split_context(test, horizon)
    with torch.no_grad():
        pred = model(context, target[..., 0])
    return float(_masked_mse(pred, target[..., 1:]))


def tstr(
    real_train: torch.Tensor,
    real_test: torch.Tensor,
    fake_train: torch.Tensor,
    *,
    horizon: float = 0.5,
    hidden_size: int = 32,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-2,
    seed: int | torch.Generator = 0,
) -> dict[str, float]:
    """``{"tstr_loss", "trtr_loss"}``: test MSE on ``real_test`` of forecasters trained on ``fake_train`` / on
    ``real_train``.

    Inputs are ``(batch_i, time, channels)`` on one grid, channel 0 the time (mapped to [0, 1] with the real
    training range). Each path's last ``horizon`` fraction of times is predicted from the rest; NaN inputs
    are filled by linear interpolation in time (``torchcde.linear_interpolation_coeffs``), NaN targets are
    masked out of the loss. Both forecasters use the same seed, so their initialisations and batch orders
    match. Trained with Adam on the device of ``real_train``.
    """
    if not 0 < horizon < 1:
        raise bad_option("horizon", horizon, "a fraction in (0, 1) of the times to forecast", "use 0.5")
    if epochs < 1 or hidden_size < 1 or batch_size < 1:
        raise ConfigError(
            f"epochs={epochs}, hidden_size={hidden_size}, batch_size={batch_size}: expected "
            "positive ints. Fix: use e.g. epochs=30, hidden_size=32, batch_size=64."
        )
    names = ("real_train", "real_test", "fake_train")
    sets = [check_paths(x, name) for x, name in zip((real_train, real_test, fake_train), names, strict=True)]
    for x, name in zip(sets[1:], names[1:], strict=True):
        check_same_grid(sets[0], x, (names[0], name))
    device = sets[0].device
    t0, span = time_map(sets[0])
    rt, rv, ft = [rescale_time(x.to(device).float(), t0, span) for x in sets]
    int_seed = seed_int(seed)
    opts = dict(horizon=horizon, hidden_size=hidden_size, epochs=epochs, batch_size=batch_size, lr=lr, seed=int_seed)
    return {
        "tstr_loss": forecast_mse(train_forecaster(ft, **opts), rv, horizon),
        "trtr_loss": forecast_mse(train_forecaster(rt, **opts), rv, horizon),
    }
