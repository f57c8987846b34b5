"""Figure of observed paths, their reconstructions, and prior samples (matplotlib Agg)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from neuralsde.metrics.plots import (  # noqa: E402
    GENERATED_COLOUR,
    MAX_CHANNELS,
    add_note,
    shown_channels,
    time_label,
)


def plot_reconstruction(observed: torch.Tensor, reconstructed: torch.Tensor, prior: torch.Tensor,
                        channel_names: list[str] | None = None, title: str = "",
                        max_channels: int | None = MAX_CHANNELS, time_unit: str | None = None) -> plt.Figure:
    """One row per data channel: observed points and their reconstructions (left), prior samples (right).

    observed (NaN where missing), reconstructed, prior: ``(batch, T, 1 + C)``, time in channel 0, same units.
    Only the first ``max_channels`` channels get a row (None: all); the figure's title names the others.
    ``time_unit``: the source's (e.g. "hour"), named on the time axes.
    """
    observed, reconstructed, prior = (x.detach().cpu() for x in (observed, reconstructed, prior))
    c = observed.size(-1) - 1
    names = channel_names or [f"channel {i}" for i in range(1, c + 1)]
    shown, note = shown_channels(c, channel_names, max_channels)
    fig, axes = plt.subplots(len(shown), 2, figsize=(10, 2.6 * len(shown)), squeeze=False, sharey="row",
                             layout="constrained")
    colours = plt.cm.tab10.colors
    for row, i in enumerate(shown):
        ax = axes[row, 0]
        for k, (obs, rec) in enumerate(zip(observed, reconstructed, strict=True)):
            colour = colours[k % len(colours)]
            ok = ~torch.isnan(obs[:, 1 + i])
            ax.plot(obs[ok, 0], obs[ok, 1 + i], ".", color=colour, ms=4)
            ax.plot(rec[:, 0], rec[:, 1 + i], "-", color=colour, lw=1, alpha=0.8)
        ax.set_title(f"observed (dots) vs reconstructed (lines): {names[i]}")
        ax = axes[row, 1]
        for path in prior:
            ax.plot(path[:, 0], path[:, 1 + i], color=GENERATED_COLOUR, alpha=0.5, lw=0.8)
        ax.set_title(f"prior samples: {names[i]}")
        for ax in axes[row]:
            ax.set_xlabel(time_label(time_unit))
    add_note(fig, title, note)
    return fig
