"""Figures comparing real and generated paths, and metric histories.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, never through pyplot, so they work
headless, leave no global figure state behind, and can be saved or logged by the caller.
"""

from __future__ import annotations

import math
import textwrap
from typing import Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from neuralsde.errors import ConfigError, check_int
from neuralsde.metrics._paths import check_paths, check_same_grid
from neuralsde.metrics.marginals import autocorrelation


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# One colour for real and one for generated paths in every figure (samples, marginals, autocorrelation, the
# latent SDE's prior samples): the marginals drew generated values orange beside the samples' red.
REAL_COLOUR, GENERATED_COLOUR = "tab:blue", "tab:red"

# Rows of channels a figure draws by default: energy's 26 channels made a 1000x6760-pixel samples figure and a
# 104-panel marginals figure (about 15 s to draw on a laptop CPU) that no one reads; the rest are named in a note.
MAX_CHANNELS = 8


def check_max_channels(value, option: str) -> int | None:
    """``value`` as a positive channel count, or None (every channel)."""
    if value is None:
        return None
    return check_int(option, value, f"e.g. {option}=8, or {option}=null for every channel",
                     also=", or null for every channel")


def shown_channels(n: int, names: list[str] | None, max_channels: int | None) -> tuple[list[int], str]:
    """The 0-based data channels to draw (the first ``max_channels``; None: all) and a note naming the others."""
    shown = list(range(n if max_channels is None else min(n, max_channels)))
    if len(shown) == n:
        return shown, ""
    rest = [names[i] if names else f"channel {i + 1}" for i in range(len(shown), n)]
    return shown, f"first {len(shown)} of {n} channels drawn; not drawn: {', '.join(rest)}"


def add_note(fig: Figure, title: str, note: str) -> None:
    """``title`` and ``note`` (wrapped to the figure's width) as the figure's suptitle."""
    if note:
        width = int(fig.get_figwidth() * 13)  # characters of the small font per inch, roughly
        note = textwrap.fill(note, width)
    text = "\n".join(t for t in (title, note) if t)
    if text:
        fig.suptitle(text, fontsize="medium" if not note else "small")


def generated_label(observation_noise: bool, name: str = "", count: int | None = None) -> str:
    """Legend text of generated paths, e.g. "generated c1 (n=256)", and a second line "with observation noise" when
    they carry it: a histogram or an autocorrelation curve of a latent SDE's samples does not show that by itself.
    Two lines, as one overran the small panels of the marginals and of a many-channel autocorrelation."""
    label = f"generated {name}" if name else "generated"
    if count is not None:
        label = f"{label} (n={count})"
    return f"{label}\nwith observation noise" if observation_noise else label


def _plural(unit: str) -> str:
    return unit if unit.endswith("s") else f"{unit}s"


def time_label(unit: str | None) -> str:
    """A time axis's label: "time (hours)" for a source's ``time_unit`` "hour", "time (x 10 minutes)" for "10
    minutes"; "time" where the source names none."""
    if not unit:
        return "time"
    return f"time (\u00d7 {unit})" if unit[0].isdigit() else f"time ({_plural(unit)})"


def time_text(value: float, unit: str | None) -> str:
    """``value`` with its unit, e.g. "8 trading days", "8 \u00d7 10 minutes", "1 hour"."""
    if not unit:
        return f"{value:.3g}"
    if unit[0].isdigit():
        return f"{value:.3g} \u00d7 {unit}"
    return f"{value:.3g} {unit if value == 1 else _plural(unit)}"


def plot_marginals(
    real: torch.Tensor, fake: torch.Tensor, times: Sequence[int] | None = None, *, channel: int = 1, bins: int = 30,
    channels: Sequence[int] | None = None, channel_names: Sequence[str] | None = None, units: str = "",
    max_channels: int | None = None, time_unit: str | None = None, observation_noise: bool = False
) -> Figure:
    """Histograms of real vs fake values of data ``channel`` (or of each of ``channels``, a row each) at several
    time indices.

    real ``(m, T, C)`` (NaN left out), fake ``(n, T, C)``; ``times`` are indices into the T axis (default four
    evenly spaced, first and last included); each panel is titled with the time of channel 0. ``channel_names``
    (one per data channel) and ``units`` (e.g. "data units") label the value axes. With ``max_channels``, only
    the first that many of ``channels`` get a row; the figure's title names the others. ``time_unit`` (the
    source's, e.g. "hour") goes into the panels' titles. ``observation_noise``: the fake paths carry it (legend).
    """
    real, fake = check_paths(real, "real").detach().cpu(), check_paths(fake, "fake").detach().cpu()
    check_same_grid(real, fake, ("real", "fake"))
    length, n_channels = real.shape[1], real.shape[2]
    rows = [channel] if channels is None else list(channels)
    for c in rows:
        if not 1 <= c < n_channels:
            raise ConfigError(
                f"channel={c} is not a data channel: expected 1..{n_channels - 1} (0 is time). "
                "Fix: pick a data channel."
            )
    shown, note = shown_channels(len(rows), [channel_names[c - 1] if channel_names else f"channel {c}" for c in rows],
                                 max_channels)
    rows = [rows[i] for i in shown]
    if times is None:
        times = sorted({round(i * (length - 1) / 3) for i in range(4)})
    bad = [t for t in times if not -length <= t < length]
    if bad:
        raise ConfigError(f"times {bad} are out of range: expected indices in [0, {length - 1}]. Fix: pick indices.")
    fig = _figure(3.2 * len(times), 3.0 * len(rows))
    grid = fig.subplots(len(rows), len(times), squeeze=False)
    for axes, c in zip(grid, rows, strict=True):
        name = channel_names[c - 1] if channel_names else f"channel {c}"
        for ax, t in zip(axes, times, strict=True):
            r, f = real[:, t, c], fake[:, t, c]
            r = r[~torch.isnan(r)]
            both = torch.cat([r, f])
            edges = torch.linspace(float(both.min()), float(both.max()) + 1e-9, bins + 1).numpy()
            ax.hist(r.numpy(), bins=edges, density=True, alpha=0.5, color=REAL_COLOUR, label=f"real (n={len(r)})")
            ax.hist(f.numpy(), bins=edges, density=True, alpha=0.5, color=GENERATED_COLOUR,
                    label=generated_label(observation_noise, count=len(f)))
            ax.set_title(f"t = {time_text(float(real[0, t, 0]), time_unit)}")
            ax.set_xlabel(f"{name} ({units})" if units else name)
        axes[0].set_ylabel("density")
    grid[0, 0].legend(fontsize="small")
    add_note(fig, "", note)
    return fig


SHARED_AXES_CHANNELS = 4  # up to this many channels share one panel; more get one panel each (a legend per line
# would outgrow the figure)


def plot_autocorrelation(real: torch.Tensor, fake: torch.Tensor, *, max_lag: int | None = None,
                         channel_names: Sequence[str] | None = None, observation_noise: bool = False) -> Figure:
    """Autocorrelation against lag of each data channel, real (solid) vs fake (dashed).

    real ``(m, T, C)`` (NaN ignored), fake ``(n, T, C)``; see ``marginals.autocorrelation``. Up to
    ``SHARED_AXES_CHANNELS`` data channels share one panel; more get a grid of panels, one per channel.
    ``observation_noise``: the fake paths carry it (legend).
    """
    real, fake = check_paths(real, "real").detach().cpu(), check_paths(fake, "fake").detach().cpu()
    check_same_grid(real, fake, ("real", "fake"))
    acf_real, acf_fake = autocorrelation(real, max_lag), autocorrelation(fake, max_lag)
    lags = range(acf_real.shape[0])
    channels = acf_real.shape[1]
    shared = channels <= SHARED_AXES_CHANNELS
    cols = 1 if shared else min(6, channels)
    rows = 1 if shared else -(-channels // cols)
    by_channel = shared and channels > 1  # colours tell the channels apart; else real and generated
    fig = _figure(7.0 if by_channel else 5.0, 3.5) if shared else _figure(2.4 * cols, 2.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True).flatten()
    for c in range(channels):
        ax = axes[0 if shared else c]
        label = channel_names[c] if channel_names else f"channel {c + 1}"
        name = label if shared else ""  # in the legend where channels share a panel
        colours = (f"C{c}", f"C{c}") if by_channel else (REAL_COLOUR, GENERATED_COLOUR)
        ax.plot(lags, acf_real[:, c].numpy(), color=colours[0], label=f"real {name}".rstrip())
        ax.plot(lags, acf_fake[:, c].numpy(), linestyle="--", color=colours[1],
                label=generated_label(observation_noise, name))
        if not shared:
            ax.set_title(label, fontsize="small")
            if c + cols >= channels:  # nothing below it: show its lag ticks
                ax.tick_params(labelbottom=True)
    for ax in axes[channels:]:
        ax.set_visible(False)
    for ax in axes[:channels]:
        ax.axhline(0, color="grey", linewidth=0.5)
    if shared:
        axes[0].set_xlabel("lag (observations)")
        axes[0].set_ylabel("autocorrelation")
    else:
        fig.supxlabel("lag (observations)")
        fig.supylabel("autocorrelation")
    if by_channel:  # beside the panel: inside, its 2 x channels entries covered the curves (Lorenz's three)
        axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        axes[0].legend(fontsize="small")
    return fig


def _finite(points) -> list[tuple[int, float]]:
    return [(s, float(v)) for s, v in points if math.isfinite(float(v))]


def plot_metric_history(history: dict[str, list[tuple[int, float]]], ci: float = 0.95) -> Figure:
    """One panel per metric: value against training step, from ``{name: [(step, value), ...]}``.

    Non-finite values are skipped; a metric with no finite value gets an empty, titled panel. ``<name>_ci_low`` and
    ``<name>_ci_high`` (the signature MMD's bootstrap interval, at level ``ci``, the metrics' option) shade their
    metric's panel instead of getting their own: without it a change of the MMD could not be told from its noise.
    """
    if not history:
        raise ConfigError("history is empty: expected {metric name: [(step, value), ...]}. Fix: log metrics first.")
    names = [n for n in history if not (n.endswith(("_ci_low", "_ci_high")) and n.rsplit("_ci_", 1)[0] in history)]
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = _figure(4.0 * cols, 3.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, name in zip(axes, names, strict=False):
        points = _finite(history[name])
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o", markersize=3)
            magnitudes = [abs(v) for v in values]
            if min(magnitudes) > 0 and max(magnitudes) > 100 * min(magnitudes):
                if min(values) > 0:
                    ax.set_yscale("log")  # early values of e.g. the signature MMD dwarf the rest
                elif max(values) < 0:  # the same for a negative metric, e.g. the latent SDE's ELBO
                    ax.set_yscale("symlog", linthresh=min(magnitudes))
            low, high = (dict(_finite(history.get(f"{name}_ci_{end}", []))) for end in ("low", "high"))
            band = [(s, low[s], high[s]) for s in steps if s in low and s in high]
            if band:
                b_steps, b_low, b_high = zip(*band, strict=True)
                ax.fill_between(b_steps, b_low, b_high, alpha=0.2, label=f"{100 * ci:g}% bootstrap interval")
                ax.legend(fontsize="small")
        ax.set_title(name)
        ax.set_xlabel("training step")  # the model's own count (train/step), not the CSV's 0-based `step` column
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no 2.5 ticks on short runs
        if ax.get_yscale() == "linear":  # plain tick values: not 0.00002 under a "+3.67e-1" offset
            ax.ticklabel_format(axis="y", useOffset=False)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return fig
