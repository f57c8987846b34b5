"""Matplotlib figures of generated and real paths (Agg backend: no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from neuralsde.metrics.plots import (  # noqa: E402
    GENERATED_COLOUR,
    MAX_CHANNELS,
    REAL_COLOUR,
    add_note,
    shown_channels,
    time_label,
)


def plot_samples(real: torch.Tensor, fake: torch.Tensor, channel_names: list[str] | None = None,
                 n_paths: int = 16, title: str = "", max_channels: int | None = MAX_CHANNELS,
                 time_unit: str | None = None) -> plt.Figure:
    """Generated paths beside real ones, one row per data channel.

    real, fake: ``(batch, T, 1 + C)`` with time in channel 0; NaNs in ``real`` show as gaps between
    observed points (drawn with markers so sparse paths stay visible). Only the first ``max_channels`` channels
    get a row (None: all); the figure's title names the others. ``time_unit``: the source's (e.g. "hour"),
    named on the time axes.
    """
    real, fake = real[:n_paths].detach().cpu(), fake[:n_paths].detach().cpu()
    c = real.size(-1) - 1
    names = channel_names or [f"channel {i}" for i in range(1, c + 1)]
    shown, note = shown_channels(c, channel_names, max_channels)
    fig, axes = plt.subplots(len(shown), 2, figsize=(10, 2.6 * len(shown)), squeeze=False, sharey="row",
                             layout="constrained")
    for row, i in enumerate(shown):
        sides = ((real, "real", REAL_COLOUR), (fake, "generated", GENERATED_COLOUR))
        for col, (paths, label, colour) in enumerate(sides):
            ax = axes[row, col]
            for path in paths:
                ok = ~torch.isnan(path[:, 1 + i])
                ax.plot(path[ok, 0], path[ok, 1 + i], color=colour, alpha=0.5, lw=0.8, marker=".", ms=2)
            ax.set_title(f"{label}: {names[i]}")
            ax.set_xlabel(time_label(time_unit))
    add_note(fig, title, note)
    return fig
