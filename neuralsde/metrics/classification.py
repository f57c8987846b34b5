"""Real/fake classification: how well a separately trained classifier tells generated paths from real ones.

A classifier (a small neural CDE by default, or a GRU) is trained on a training split of real (label 1)
and generated (label 0) paths and evaluated on a held-out split. Accuracy and BCE are class-balanced
(each class weighs half), so 0.5 accuracy means indistinguishable even when the classes differ in size.
"""

from __future__ import annotations

import torch
import torchcde
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
CDE_METHODS = ("rk4", "euler", "midpoint")  # fixed-step torchcde solvers for the CDE classifier


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time, channels)`` NaN-free -> logits ``(batch,)``."""
        path = torchcde.LinearInterpolation(torchcde.linear_interpolation_coeffs(x))
        z0 = self.initial(path.evaluate(path.interval[0]))
        zt = torchcde.cdeint(
            X=path, func=self._f, z0=z0, t=path.interval, method=self.method, options={"step_size": 1.0}, adjoint=False
        )
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
    the device of ``real_train``. ``classifier``: "cde" (neural CDE, fixed-step ``method`` "rk4" or "euler")
    or "gru". Accuracy and BCE are class-balanced held-out values; 0.5 / log(2) ≈ 0.693 is chance.
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
