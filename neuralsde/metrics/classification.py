"""Real/fake classification: how well a separately trained classifier tells generated paths from real ones.

A classifier (a small neural CDE by default, or a GRU) is trained on a training split of real (label 1)
and generated (label 0) paths and evaluated on a held-out split. Accuracy and BCE are class-balanced
(each class weighs half), so 0.5 accuracy means indistinguishable even when the classes differ in size.
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
    mask_like,
    rescale_time,
    seed_int,
    seeded,
    time_map,
)

CLASSIFIERS = ("cde", "gru")
CDE_METHODS = ("rk4", "euler", "midpoint")  # torchdiffeq's fixed-step solvers, as torchcde runs them
_ONE_THIRD = 1 / 3


class CDEClassifier(nn.Module):
    """Neural CDE ``dz = f(z) dX`` driven by the linear interpolation of the path; logit from ``z_T``.

    Integrated with a fixed-step solver (``method``) whose step is one observation interval, so the cost
    is that of an RNN over the observations.
    """

    def __init__(self, channels: int, hidden: int, method: str = "rk4"):
        super().__init__()
        self.channels, self.hidden, self.method = channels, hidden, method
        self.initial = nn.Linear(channels, hidden)
        # tanh bounds the vector field so the solution stays well behaved over long paths.
        self.field = nn.Sequential(
            nn.Linear(hidden, hidden), nn.Softplus(), nn.Linear(hidden, hidden * channels), nn.Tanh()
        )
        self.readout = nn.Linear(hidden, 1)

    def _f(self, t, z):
        return self.field(z).view(*z.shape[:-1], self.hidden, self.channels)

    def _fx(self, z: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        return (self._f(None, z) @ dx.unsqueeze(-1)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time, channels)`` NaN-free -> logits ``(batch,)``.

        What ``torchcde.cdeint`` over ``torchcde.LinearInterpolation`` computes with torchdiffeq's fixed-grid
        ``method`` (step 1 on the index grid), written out operation by operation in the same order: the same
        logits and gradients bit for bit, without their per-evaluation bookkeeping (time lookups, wrappers), which
        made training this classifier 1.3x slower and its forward pass 1.8x (bench row 11; the real/fake metric is most
        of the test stage).
        """
        length = x.size(1)
        t = torch.linspace(0, length - 1, length, dtype=x.dtype, device=x.device)
        dx = (x[:, 1:] - x[:, :-1]) / (t[1:] - t[:-1]).unsqueeze(-1)  # the interpolation's slope on each interval
        start = (t[0] - t[0]).unsqueeze(-1)
        z = self.initial(x[:, 0] + start * (x[:, 1] - x[:, 0]) / (t[1] - t[0]).unsqueeze(-1))
        grid = torch.arange(0, length, dtype=x.dtype, device=x.device) * 1.0 + t[0]
        grid[-1] = t[-1]
        for k in range(length - 1):
            dt = grid[k + 1] - grid[k]
            # at a knot torchcde takes the slope of the interval before it; inside the step, that of this one
            k1 = self._fx(z, dx[:, max(k - 1, 0)])
            if self.method == "euler":
                step = dt * k1
            elif self.method == "midpoint":
                step = dt * self._fx(z + k1 * (0.5 * dt), dx[:, k])
            else:  # torchdiffeq's rk4: the 3/8 rule
                k2 = self._fx(z + dt * k1 * _ONE_THIRD, dx[:, k])
                k3 = self._fx(z + dt * (k2 - k1 * _ONE_THIRD), dx[:, k])
                k4 = self._fx(z + dt * (k1 - k2 + k3), dx[:, k])
                step = (k1 + 3 * (k2 + k3) + k4) * dt * 0.125
            z = z + step
        return self.readout(z).squeeze(-1)

    def torchcde_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` through ``torchcde.cdeint`` over ``torchcde.LinearInterpolation``: the library reference the
        written-out ``forward`` must equal bit for bit (tests/test_metrics.py, bench row 11)."""
        import torchcde

        path = torchcde.LinearInterpolation(torchcde.linear_interpolation_coeffs(x))
        z0 = self.initial(path.evaluate(path.interval[0]))
        zt = torchcde.cdeint(X=path, func=self._f, z0=z0, t=path.interval, method=self.method,
                             options={"step_size": 1.0}, adjoint=False)
        return self.readout(zt[:, -1]).squeeze(-1)


class GRUClassifier(nn.Module):
    """GRU over the observations; logit from the last hidden state."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time, channels)`` NaN-free -> logits ``(batch,)``."""
        return self.readout(self.gru(x)[1][-1]).squeeze(-1)


def _balanced_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    losses = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return 0.5 * (losses[labels == 1].mean() + losses[labels == 0].mean())


def real_fake_classification(
    real_train: torch.Tensor,
    fake_train: torch.Tensor,
    real_test: torch.Tensor,
    fake_test: torch.Tensor,
    *,
    classifier: str = "cde",
    hidden_size: int = 16,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-2,
    method: str = "rk4",
    seed: int | torch.Generator = 0,
) -> dict[str, float]:
    """Train a real-vs-fake classifier and report ``{"real_fake_acc", "real_fake_loss"}`` on the test split.

    All inputs are ``(batch_i, time, channels)`` on one time grid, channel 0 the time. Real NaN are filled by
    linear interpolation in time (``torchcde.linear_interpolation_coeffs``; ends back/forward-filled) after each
    fake path has been given the missing values of a randomly drawn real path of its split (``mask_like``), so
    missingness itself is not a cue. Time is mapped to [0, 1] with the real training range. Training uses
    Adam for ``epochs`` passes in minibatches of ``batch_size``, seeded by ``seed``; the model is trained on
    the device of ``real_train``. ``classifier``: "cde" (neural CDE, fixed-step ``method`` "rk4", "euler" or
    "midpoint") or "gru". Accuracy and BCE are class-balanced held-out values; 0.5 / log(2) ≈ 0.693 is chance.
    """
    if classifier not in CLASSIFIERS:
        raise bad_option("classifier", classifier, f"one of {CLASSIFIERS}", 'use "cde" (default) or "gru"')
    if method not in CDE_METHODS:
        raise bad_option("method", method, 'a fixed-step solver: "rk4", "euler" or "midpoint"', 'use "rk4"')
    if epochs < 1 or hidden_size < 1 or batch_size < 1:
        raise ConfigError(
            f"epochs={epochs}, hidden_size={hidden_size}, batch_size={batch_size}: expected "
            "positive ints. Fix: use e.g. epochs=10, hidden_size=16, batch_size=64."
        )
    names = ("real_train", "fake_train", "real_test", "fake_test")
    sets = [check_paths(x, name) for x, name in zip((real_train, fake_train, real_test, fake_test), names, strict=True)]
    for x, name in zip(sets[1:], names[1:], strict=True):
        check_same_grid(sets[0], x, (names[0], name))
    device = sets[0].device
    t0, span = time_map(sets[0])
    int_seed = seed_int(seed)
    masks = make_generator(int_seed, "cpu")
    sets[1], sets[3] = mask_like(sets[1], sets[0], masks), mask_like(sets[3], sets[2], masks)
    rt, ft, rv, fv = [rescale_time(fill_missing(x), t0, span).to(device).float() for x in sets]
    x_train, y_train = torch.cat([rt, ft]), torch.cat([torch.ones(len(rt)), torch.zeros(len(ft))]).to(device)
    x_test, y_test = torch.cat([rv, fv]), torch.cat([torch.ones(len(rv)), torch.zeros(len(fv))]).to(device)

    with seeded(int_seed):
        channels = x_train.shape[-1]
        model = (
            CDEClassifier(channels, hidden_size, method)
            if classifier == "cde"
            else GRUClassifier(channels, hidden_size)
        )
    model = model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    gen = make_generator(int_seed, "cpu")
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train), generator=gen).split(batch_size):
            idx = idx.to(device)
            logits = model(x_train[idx])
            labels = y_train[idx]
            # a minibatch may hold one class only; the plain mean is then the right loss for it.
            if labels.min() == labels.max():
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
            else:
                loss = _balanced_bce(logits, labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x_test[i : i + 256]) for i in range(0, len(x_test), 256)])
    correct = ((logits > 0).float() == y_test).float()
    acc = 0.5 * (correct[y_test == 1].mean() + correct[y_test == 0].mean())
    return {"real_fake_acc": float(acc), "real_fake_loss": float(_balanced_bce(logits, y_test))}
