"""What the run's figures show: panels, labels, legends and notes (read from the figure objects, not pixels)."""
import pytest
import torch

from latent_sde.callbacks import LatentSDEPlotCallback
from latent_sde.plotting import plot_reconstruction
from neuralsde.callbacks import SamplePlotCallback
from neuralsde.errors import ConfigError
from neuralsde.evaluation import MetricsCallback
from neuralsde.metrics.plots import plot_marginals
from neuralsde.plotting import plot_samples


def paths(n=6, length=10, channels=12, seed=0):
    """``(n, length, 1 + channels)`` random paths, time 0..length-1 in channel 0."""
    x = torch.randn(n, length, 1 + channels, generator=torch.Generator().manual_seed(seed))
    x[..., 0] = torch.arange(length, dtype=torch.float32)
    return x


NAMES = [f"c{i}" for i in range(12)]


def suptitle(fig) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


def test_many_channels_draw_max_channels_rows_and_name_the_rest():
    # energy's 26 channels gave a 6760-pixel-high samples figure and 104 marginal panels (~15 s to draw)
    real, fake = paths(seed=1), paths(seed=2)
    fig = plot_samples(real, fake, NAMES, title="sdegan, step 4")  # default: 8
    assert len(fig.axes) == 8 * 2
    assert [ax.get_title() for ax in fig.axes[::2]] == [f"real: c{i}" for i in range(8)]
    assert [ax.get_title() for ax in fig.axes[1::2]] == [f"generated: c{i}" for i in range(8)]
    assert suptitle(fig).startswith("sdegan, step 4\nfirst 8 of 12 channels drawn; not drawn: c8, c9, c10, c11")
    # the rows drawn are those channels' data
    assert torch.equal(torch.tensor(fig.axes[14].lines[0].get_ydata()), real[0, :, 8])
    assert len(plot_samples(real, fake, NAMES, max_channels=None).axes) == 12 * 2

    fig = plot_marginals(real, fake, times=[0, -1], channels=range(1, 13), channel_names=NAMES, max_channels=3)
    assert len(fig.axes) == 3 * 2
    assert [ax.get_xlabel() for ax in fig.axes[::2]] == ["c0", "c1", "c2"]
    assert "not drawn: c3, c4" in suptitle(fig).replace("\n", " ")

    fig = plot_reconstruction(real, real, fake, NAMES, title="latent_sde, step 4", max_channels=2)
    assert len(fig.axes) == 2 * 2 and fig.axes[3].get_title() == "prior samples: c1"
    assert "first 2 of 12 channels drawn" in suptitle(fig)


def test_few_channels_are_all_drawn_with_no_note():
    real, fake = paths(channels=3, seed=1), paths(channels=3, seed=2)
    assert suptitle(plot_samples(real, fake, ["a", "b", "c"], title="t")) == "t"
    fig = plot_marginals(real, fake, channels=[1, 2, 3], max_channels=8)
    assert len(fig.axes) == 3 * 4 and suptitle(fig) == ""


@pytest.mark.parametrize("make, option", [
    (lambda v: SamplePlotCallback("/tmp/unused", max_channels=v), "callbacks.sample_plot.max_channels"),
    (lambda v: MetricsCallback("/tmp/unused", plot_max_channels=v), "callbacks.metrics.plot_max_channels"),
    (lambda v: LatentSDEPlotCallback("/tmp/unused", max_channels=v), "callbacks.latent_sde_plot.max_channels"),
])
def test_bad_max_channels_is_refused_naming_the_option(make, option):
    for bad in (0, "all", 2.5):
        with pytest.raises(ConfigError, match=rf"{option}=.*positive integer.*null"):
            make(bad)
    make(None)


class HourlySource:
    """A source that names its time unit in ``meta``, as air quality ("hour") or stocks ("trading day") do."""

    def __init__(self, unit):
        self.unit = unit

    def load(self):
        from neuralsde.data.base import RawSeries

        values = torch.randn(20, 6, 2, generator=torch.Generator().manual_seed(0))
        return RawSeries(torch.arange(6.0), values, ["PM2.5", "O3"], meta={"time_unit": self.unit})


def test_time_axes_name_the_source_time_unit():
    # every figure's time axis read "time" and the marginal panels "t = 8": hours, trading days or minutes?
    from neuralsde.data.datamodule import TimeSeriesDataModule

    dm = TimeSeriesDataModule(HourlySource("hour"), batch_size=4)
    dm.setup("fit")
    assert dm.source_time_unit == "hour"
    real = dm.to_plot_units(dm.train[:4])
    fig = plot_samples(real, real, dm.channel_names, time_unit=dm.source_time_unit)
    assert {ax.get_xlabel() for ax in fig.axes} == {"time (hours)"}
    fig = plot_reconstruction(real, real, real, dm.channel_names, time_unit="10 minutes")
    assert {ax.get_xlabel() for ax in fig.axes} == {"time (\u00d7 10 minutes)"}
    fig = plot_marginals(real, real, times=[0, 1, 5], channels=[1, 2], time_unit="trading day")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["t = 0 trading days", "t = 1 trading day", "t = 5 trading days"]
    # a source that names no unit (OU, Lorenz, a CSV of numbers) keeps the bare word
    assert plot_samples(real, real).axes[0].get_xlabel() == "time"
    assert plot_marginals(real, real, times=[5]).axes[0].get_title() == "t = 5"


@pytest.mark.parametrize("folder, source, unit", [
    ("stock_goog_daily", "neuralsde.data.stocks.GoogDailySource", "trading day"),
    ("energy_appliances", "neuralsde.data.energy.EnergySource", "10 minutes"),
])
def test_real_sources_name_their_time_unit(folder, source, unit):
    from hydra.utils import get_class

    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA / folder} is absent")
    assert get_class(source)(data_dir=str(SHARED_DATA)).load().meta["time_unit"] == unit


def test_real_and_generated_keep_their_colours_across_figures():
    # marginals.png drew generated values orange (matplotlib's second colour) beside samples.png's red
    from matplotlib.colors import to_hex

    from neuralsde.metrics.plots import plot_autocorrelation

    real, fake = paths(n=8, channels=1, seed=1), paths(n=8, channels=1, seed=2)
    samples = plot_samples(real, fake)
    marginals = plot_marginals(real, fake, times=[0])
    acf = plot_autocorrelation(real, fake)
    recon = plot_reconstruction(real, real, fake)
    blue, red = to_hex("tab:blue"), to_hex("tab:red")
    assert to_hex(samples.axes[0].lines[0].get_color()) == blue and to_hex(samples.axes[1].lines[0].get_color()) == red
    assert [to_hex(c.patches[0].get_facecolor()[:3]) for c in marginals.axes[0].containers] == [blue, red]
    assert [to_hex(line.get_color()) for line in acf.axes[0].lines[:2]] == [blue, red]
    assert to_hex(recon.axes[1].lines[0].get_color()) == red  # prior samples are generated paths
    grid = plot_autocorrelation(paths(n=8, channels=6, seed=1), paths(n=8, channels=6, seed=2))
    assert {(to_hex(ax.lines[0].get_color()), to_hex(ax.lines[1].get_color())) for ax in grid.axes[:6]} == {(blue, red)}


def test_autocorrelation_legend_of_several_channels_sits_beside_the_curves():
    # Lorenz's three channels: a six-entry legend inside the panel covered the curves
    from neuralsde.metrics.plots import plot_autocorrelation

    real, fake = paths(n=8, channels=3, seed=1), paths(n=8, channels=3, seed=2)
    fig = plot_autocorrelation(real, fake, channel_names=["y1", "y2", "y3"])
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [f"{k} y{i}" for i in (1, 2, 3) for k in ("real", "generated")]
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    assert legend.get_window_extent(renderer).x1 <= fig.bbox.x1  # not clipped at the figure's edge
    # real solid, generated dashed, one colour per channel
    assert [line.get_linestyle() for line in ax.lines[:2]] == ["-", "--"]
    assert ax.lines[0].get_color() == ax.lines[1].get_color() != ax.lines[2].get_color()


def test_metric_history_shades_the_mmd_interval_and_prints_plain_ticks():
    # the intervals were dropped from metric_history.png, so a change of the MMD could not be told from its noise;
    # a flat metric's ticks read 0.00002 ... under a "+3.67e-1" offset
    from neuralsde.metrics.plots import plot_metric_history

    history = {"val/sig_mmd": [(2, 0.5), (4, 0.3), (6, float("nan"))],
               "val/sig_mmd_ci_low": [(2, 0.1), (4, -0.1), (6, 0.0)],
               "val/sig_mmd_ci_high": [(2, 0.9), (4, 0.7), (6, 1.0)],
               "val/acf_error": [(2, 0.36702), (4, 0.36691)]}
    fig = plot_metric_history(history)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["val/sig_mmd", "val/acf_error"]
    (band,) = shown[0].collections
    ys = sorted({round(float(y), 6) for y in band.get_paths()[0].vertices[:, 1]})
    assert ys == [-0.1, 0.1, 0.7, 0.9]  # the NaN step's interval is left out with its point
    assert [t.get_text() for t in shown[0].get_legend().get_texts()] == ["95% bootstrap interval"]
    assert shown[1].get_legend() is None and not shown[1].collections
    fig.canvas.draw()
    assert shown[1].yaxis.get_offset_text().get_text() == ""
    assert all(t.get_text().startswith("0.36") for t in shown[1].get_yticklabels() if t.get_text())
    # the legend names the level the intervals were computed at (callbacks.metrics.options.ci), not always 95%
    legend = plot_metric_history(history, ci=0.9).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["90% bootstrap interval"]
    # a lone interval with no metric keeps its own panel
    assert [ax.get_title() for ax in plot_metric_history({"x_ci_low": [(1, 0.0)]}).axes] == ["x_ci_low"]


def test_metric_history_spreading_over_decades_gets_a_log_axis_whatever_its_sign():
    # the latent SDE's val/elbo starts thousands below where it ends: on a linear axis its later values were flat
    from neuralsde.metrics.plots import plot_metric_history

    fig = plot_metric_history({"val/elbo": [(1, -4e3), (2, -60.0), (3, -12.0)], "val/sig_mmd": [(1, 3.0), (2, 0.01)],
                               "val/acf_error": [(1, 0.3), (2, 0.2)], "mixed": [(1, -500.0), (2, 1.0)]})
    assert [ax.get_yscale() for ax in fig.axes if ax.get_visible()] == ["symlog", "log", "linear", "linear"]
    fig.canvas.draw()  # the symlog axis draws (a zero linthresh would raise)


def test_metrics_callback_labels_the_interval_at_its_own_level(monkeypatch):
    # callbacks.metrics.options.ci=0.9 computed 90% intervals, and metric_history.png called them 95%
    from types import SimpleNamespace

    import neuralsde.evaluation as evaluation

    drawn = {}
    monkeypatch.setattr(evaluation, "log_figure", lambda trainer, fig, name, out: drawn.setdefault(name, fig))
    callback = MetricsCallback("/tmp/unused", options={"ci": 0.9})
    callback.history = {"val/sig_mmd": [(2, 0.5)], "val/sig_mmd_ci_low": [(2, 0.1)], "val/sig_mmd_ci_high": [(2, 0.9)]}
    dm = SimpleNamespace(channel_names=["a"], to_plot_units=lambda x: x, source_time_unit=None)
    callback._plots(SimpleNamespace(datamodule=dm), paths(channels=1, seed=1), paths(channels=1, seed=2))
    legend = drawn["metric_history"].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["90% bootstrap interval"]


@pytest.mark.parametrize("noise", [False, True])
def test_sample_figures_say_whether_the_samples_carry_observation_noise(monkeypatch, noise):
    # with model.sample_observation_noise a latent SDE's samples.png and reconstruction.png draw noisy prior samples,
    # and their titles said "latent_sde, step N" either way
    from types import SimpleNamespace

    import latent_sde.callbacks as latent_callbacks
    import neuralsde.callbacks as callbacks
    from tests.test_latent_sde import make_batch, make_model

    titles = []
    for module, name in ((callbacks, "plot_samples"), (latent_callbacks, "plot_reconstruction")):
        monkeypatch.setattr(module, name, lambda *args, title="", **kwargs: titles.append(title))
        monkeypatch.setattr(module, "log_figure", lambda *args, **kwargs: None)
    observed, filled = make_batch()
    dm = SimpleNamespace(val=observed, train=observed, filled={"val": filled}, to_plot_units=lambda x: x,
                         channel_names=None, source_time_unit=None)
    trainer, model = SimpleNamespace(datamodule=dm), make_model(sample_observation_noise=noise)
    SamplePlotCallback("unused", n_paths=2)._plot(trainer, model, "samples")
    LatentSDEPlotCallback("unused", n_paths=2).on_train_end(trainer, model)
    expected = "latent_sde, step 0" + (", samples with observation noise" if noise else "")
    assert titles == [expected, expected]


@pytest.mark.parametrize("noise", [False, True])
def test_marginal_and_autocorrelation_legends_say_whether_the_samples_carry_observation_noise(noise):
    # a latent SDE's test-stage marginals.png and autocorrelation.png labelled noisy samples "generated" alone
    from neuralsde.metrics.plots import plot_autocorrelation

    noisy = "\nwith observation noise" if noise else ""

    def legend(fig, ax=0):
        return [t.get_text() for t in fig.axes[ax].get_legend().get_texts()]

    real, fake = paths(n=6, channels=6, seed=1), paths(n=5, channels=6, seed=2)
    marginals = plot_marginals(real, fake, channels=[1, 2], observation_noise=noise)
    assert legend(marginals) == ["real (n=6)", f"generated (n=5){noisy}"]
    one = plot_autocorrelation(real[..., :2], fake[..., :2], channel_names=["y1"], observation_noise=noise)
    assert legend(one) == ["real y1", f"generated y1{noisy}"]
    shared = plot_autocorrelation(real[..., :4], fake[..., :4], channel_names=["y1", "y2", "y3"],
                                  observation_noise=noise)
    assert legend(shared) == [text for i in (1, 2, 3) for text in (f"real y{i}", f"generated y{i}{noisy}")]
    grid = plot_autocorrelation(real, fake, observation_noise=noise)  # a panel per channel, one legend
    assert legend(grid) == ["real", f"generated{noisy}"]
    assert [ax.get_legend() for ax in grid.axes[1:]] == [None] * (len(grid.axes) - 1)


@pytest.mark.parametrize("noise", [False, True])
def test_metrics_callback_figures_follow_the_models_observation_noise(monkeypatch, noise):
    # the test stage's figures are drawn from model.sample, which adds the noise under model.sample_observation_noise
    from types import SimpleNamespace

    import neuralsde.evaluation as evaluation
    from tests.test_latent_sde import make_batch, make_model

    drawn = {}
    monkeypatch.setattr(evaluation, "log_figure", lambda trainer, fig, name, out: drawn.setdefault(name, fig))
    observed, _ = make_batch(batch=6)
    model = make_model(sample_observation_noise=noise)
    with torch.no_grad():
        fake = model.sample(6, generator=torch.Generator().manual_seed(0))
    used = {"real_test": observed, "fake_test": fake}  # what the suite compared, without running it
    monkeypatch.setattr(evaluation, "evaluate", lambda *args, **kwargs: ({}, used))
    dm = SimpleNamespace(channel_names=["a", "b"], to_plot_units=lambda x: x, source_time_unit=None)
    trainer = SimpleNamespace(datamodule=dm, is_global_zero=True, progress_bar_callback=None)
    MetricsCallback("/tmp/unused").on_test_epoch_end(trainer, model)
    noisy = "\nwith observation noise" if noise else ""
    texts = {name: [t.get_text() for t in drawn[name].axes[0].get_legend().get_texts()]
             for name in ("marginals", "autocorrelation")}
    assert texts == {"marginals": ["real (n=6)", f"generated (n=6){noisy}"],
                     "autocorrelation": ["real a", f"generated a{noisy}", "real b", f"generated b{noisy}"]}
