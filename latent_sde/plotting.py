"""Figure of observed paths, their reconstructions, and prior samples (matplotlib Agg)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def plot_reconstruction(observed: torch.Tensor, reconstructed: torch.Tensor, prior: torch.Tensor,
                        channel_names: list[str] | None = None, title: str = "") -> plt.Figure:
    """One row per data channel: observed points and their reconstructions (left), prior samples (right).

    observed (NaN where missing), reconstructed, prior: ``(batch, T, 1 + C)``, time in channel 0, same units.
    """
    observed, reconstructed, prior = (x.detach().cpu() for x in (observed, reconstructed, prior))
    c = observed.size(-1) - 1
    names = channel_names or [f"channel {i}" for i in range(1, c + 1)]
    fig, axes = plt.subplots(c, 2, figsize=(10, 2.6 * c), squeeze=False, sharey="row", layout="constrained")
    colours = plt.cm.tab10.colors
    for i in range(c):
        ax = axes[i, 0]
        for k, (obs, rec) in enumerate(zip(observed, reconstructed, strict=True)):
            colour = colours[k % len(colours)]
            ok = ~torch.isnan(obs[:, 1 + i])
            ax.plot(obs[ok, 0], obs[ok, 1 + i], ".", color=colour, ms=4)
            ax.plot(rec[:, 0], rec[:, 1 + i], "-", color=colour, lw=1, alpha=0.8)
        ax.set_title(f"observed (dots) vs reconstructed (lines): {names[i]}")
        ax = axes[i, 1]
        for path in prior:
            ax.plot(path[:, 0], path[:, 1 + i], color="tab:red", alpha=0.5, lw=0.8)
        ax.set_title(f"prior samples: {names[i]}")
        for ax in axes[i]:
            ax.set_xlabel("time")
    if title:
        fig.suptitle(title)
    return fig
