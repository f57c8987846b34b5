"""The default experiment end to end: fast_dev_run, a few real steps, artefacts, seeding."""
import math
import warnings

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from neuralsde.training import train


def test_fast_dev_run(tiny_cfg, tmp_path, caplog):
    cfg = tiny_cfg()
    with open_dict(cfg):
        cfg.trainer.fast_dev_run = True
    with caplog.at_level("INFO"):
        metrics = train(cfg)
    assert "train/d_loss" in metrics
    # no checkpoint, as Lightning announces: a one-batch run's last.ckpt was the newest that resume=auto continued
    assert not list(tmp_path.rglob("*.ckpt"))
    # Lightning's own start-up lines still come through; its cloud-logger advertisement does not
    assert any("GPU available" in r.getMessage() for r in caplog.records)
    assert not any("litlogger" in r.getMessage() for r in caplog.records)



@pytest.mark.parametrize("experiment", ["ou_sdegan", "ou_latent_sde"])
def test_debug_fast_runs_every_test_metric_at_smoke_size(tmp_path, experiment):
    # debug=fast is the smoke test before a long job: its test stage trained the real/fake classifier (10 epochs)
    # and the TSTR forecaster (30 epochs) on 256 paths, most of the run's time; now each metric runs once, small.
    from neuralsde.metrics import METRICS
    from tests.conftest import compose_config, shrink

    composed = compose_config([f"experiment={experiment}", "debug=fast"])
    metrics_cfg = composed.callbacks.metrics.copy()
    assert metrics_cfg.n_samples <= 32
    assert metrics_cfg.options.classifier_epochs == 1 and metrics_cfg.options.forecast_epochs == 1
    assert metrics_cfg.options.n_boot <= 10
    cfg = shrink(composed, tmp_path)
    with open_dict(cfg):
        cfg.callbacks.metrics = metrics_cfg  # shrink's own sizes replaced by debug=fast's
    logged = train(cfg)
    wanted = {f"test/{key}" for name in metrics_cfg.test_metrics for key in METRICS[name].keys}
    wanted.discard("test/cross_corr_error")  # absent for OU's single data channel
    assert wanted <= set(logged) and all(math.isfinite(logged[key]) for key in wanted)


def test_float64_training(tiny_cfg, tmp_path):
    import torch

    cfg = tiny_cfg(steps=2)
    with open_dict(cfg):
        cfg.trainer.precision = "64-true"
        cfg.test = False
    metrics = train(cfg)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float64}
    assert math.isfinite(metrics["train/d_loss"])


def test_few_steps_write_checkpoint_metrics_and_plot(tiny_cfg, tmp_path, capsys, caplog):
    cfg = tiny_cfg(steps=4)
    with caplog.at_level("INFO"):
        metrics = train(cfg)
    # the run's last lines say where its checkpoint is, as eval.py takes it
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"Checkpoint: {last} (python eval.py ckpt_path={last})" in caplog.text
    printed = capsys.readouterr().out  # the test metrics, as a table at the end of the run
    assert "sdegan, test split, after 4 steps" in printed
    assert any("test/w_dist" in line and f"{metrics['test/w_dist']:.5g}" in line for line in printed.splitlines())
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    csv = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    assert {"train/d_loss", "train/g_loss", "val/w_dist"} <= set(csv.columns)
    assert csv["train/step"].max() == 4
    assert (tmp_path / "plots" / "samples.png").stat().st_size > 1000
    assert (tmp_path / "config.yaml").is_file()
    assert "test/w_dist" in metrics


def test_same_seed_same_losses(tiny_cfg, tmp_path):
    runs = []
    for i, seed in enumerate((0, 0, 1)):
        cfg = tiny_cfg([f"seed={seed}"], steps=3)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"run{i}")
            cfg.test = False
            cfg.trainer.log_every_n_steps = 1
        train(cfg)
        runs.append(pd.read_csv(tmp_path / f"run{i}" / "csv" / "metrics.csv"))
    a, b, other = (r["train/d_loss"].dropna().to_numpy() for r in runs)
    assert len(a) == 3
    assert (a == b).all()
    assert not (a == other).all()  # the seed is used: another one gives another run


@pytest.mark.parametrize("base,option", [([], ["solver=midpoint"]), ([], ["model.lipschitz=gradient_penalty"]),
                                         ([], ["model.update=alternating"]), ([], ["solver.backend=torchsde"]),
                                         (["solver.backend=torchsde"], ["solver.brownian=tree"]),
                                         (["solver.dt=0.5"], ["model.discriminator.interpolation=hermite"])])
def test_options_train(tiny_cfg, base, option, tmp_path):
    losses = []
    for name, overrides in (("base", base), ("option", base + option)):
        cfg = tiny_cfg(overrides, steps=2)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
            cfg.test = False
        losses.append(train(cfg)["train/d_loss"])
    assert all(math.isfinite(x) for x in losses)
    assert losses[1] != losses[0]  # the option reached the run (same seed, same data)


def test_hermite_where_it_equals_linear_warns():
    # Reversible Heun at dt = 1 reads the path's derivative at observation times only, where torchcde's Hermite cubic
    # (backward differences) and the linear interpolation agree: same scores, and the user is told so.
    from neuralsde.solver import SolverConfig
    from sdegan.components.discriminator import Discriminator

    paths = torch.randn(4, 10, 3, generator=torch.Generator().manual_seed(0)).cumsum(1)
    scores = {}
    for interpolation in ("linear", "hermite"):
        torch.manual_seed(1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            disc = Discriminator(2, 8, 8, t_size=10, interpolation=interpolation, solver=SolverConfig())
        said = [str(w.message) for w in caught if "interpolation=hermite" in str(w.message)]
        assert len(said) == (interpolation == "hermite") and all("Fix: solver.dt=0.5" in m for m in said)
        scores[interpolation] = disc(paths)
    torch.testing.assert_close(scores["hermite"], scores["linear"], rtol=1e-5, atol=1e-6)
    for solver in (SolverConfig(dt=0.5), SolverConfig(method="midpoint")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning where the cubic is felt
            Discriminator(2, 8, 8, t_size=10, interpolation="hermite", solver=solver)


def test_alternating_updates_log_the_latest_generator_loss(tiny_cfg, tmp_path):
    # The generator steps on steps 0, 3, 6 and logs are written after steps 2, 5 (never a generator step).
    cfg = tiny_cfg(["model.update=alternating", "model.n_critic=3"], steps=6)
    with open_dict(cfg):
        cfg.test = False
        cfg.trainer.log_every_n_steps = 3
    train(cfg)
    log = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    assert log["train/g_loss"].notna().sum() == log["train/d_loss"].notna().sum() >= 2


def test_step_logs_only_on_written_steps_give_the_same_csv(tiny_cfg, tmp_path, monkeypatch):
    """``log_step`` skips Lightning's ``log`` on steps whose logs are never written: the CSV is what logging every
    step gives, with far fewer calls."""
    import pytorch_lightning as pl

    from neuralsde.module_base import GenerativeModule

    calls = []
    log_dict = pl.LightningModule.log_dict
    monkeypatch.setattr(pl.LightningModule, "log_dict", lambda self, m, **k: (calls.append(m), log_dict(self, m, **k)))
    runs = []
    for every_step in (False, True):
        if every_step:  # the behaviour before: every step, every key
            monkeypatch.setattr(GenerativeModule, "log_step", lambda self, m, **k: self.log_dict(m, **k))
        calls.clear()
        cfg = tiny_cfg(steps=12)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"run{every_step}")
            cfg.test = False
            cfg.trainer.log_every_n_steps = 5
            cfg.trainer.val_check_interval = 12
        train(cfg)
        csv = pd.read_csv(tmp_path / f"run{every_step}" / "csv" / "metrics.csv")
        keep = csv[["step", "train/d_loss", "train/g_loss", "train/step"]].dropna()
        runs.append((keep, sum("train/d_loss" in m for m in calls)))
    (sparse, n_sparse), (every, n_every) = runs
    pd.testing.assert_frame_equal(sparse.reset_index(drop=True), every.reset_index(drop=True))
    assert sparse["train/step"].tolist() == [5.0, 10.0, 12.0]  # every 5th step and the last
    assert n_every == 12 and n_sparse <= 4


def test_threads_are_set_for_the_run_and_restored(tiny_cfg, monkeypatch):
    # threads=N holds inside training (the module's step sees it) and the caller's count comes back afterwards;
    # the default experiment asks for one (small networks: see configs/experiment/ou_sdegan.yaml).
    import torch

    from neuralsde.errors import ConfigError
    from sdegan.module import SDEGAN

    cfg = tiny_cfg(steps=2)
    assert cfg.threads == 1
    seen, train_batch = [], SDEGAN.train_batch
    monkeypatch.setattr(SDEGAN, "train_batch", lambda self, batch: (seen.append(torch.get_num_threads()),
                                                                    train_batch(self, batch))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with open_dict(cfg):
            cfg.test = False
        train(cfg)
        assert seen == [1, 1] and torch.get_num_threads() == 2
        for bad in (0, "two", 1.5):
            with open_dict(cfg):
                cfg.threads = bad
            with pytest.raises(ConfigError, match=r"threads=.*positive integer.*Fix"):
                train(cfg)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def show_step_bar(cfg, **options) -> None:
    """The run's StepProgressBar, drawn (tests turn bars off), redrawn at every step."""
    cfg.trainer.enable_progress_bar = True
    cfg.callbacks.progress_bar = {"_target_": "neuralsde.progress.StepProgressBar", "refresh_rate": 1, **options}


def test_progress_bar_counts_training_steps(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg(steps=3)
    with open_dict(cfg):
        show_step_bar(cfg, refresh_interval_s=0)
        cfg.test = False
    train(cfg)
    out = capsys.readouterr().out.replace("\r", "\n")
    assert "sdegan: 100%" in out and "3/3" in out and "step/s" in out  # steps, not batches or epochs
    assert [f"{i}/3 [" in out for i in (1, 2, 3)] == [True] * 3
    assert out.count("2/3 [") == 1  # one draw per update (set_postfix drew it a second time)
    assert "val/" in out  # the validation metrics join the main bar ...
    assert "Validation" not in out and "Training" not in out  # ... which is the only bar while fitting


def test_model_summary_counts_parameters_and_prints_no_flops(tiny_cfg, capsys, caplog):
    # Lightning's summary had a FLOPs column of zeros and "Total FLOPs: 0": it counts them by running the module's
    # example input, which no model here has
    from pytorch_lightning.utilities.model_summary import get_human_readable_count

    from neuralsde.training import build

    cfg = tiny_cfg()
    with open_dict(cfg):
        cfg.trainer.fast_dev_run = True
        cfg.trainer.enable_model_summary = True  # tests turn it off
        cfg.callbacks.pop("metrics")
        cfg.test = False
    with caplog.at_level("INFO"):
        train(cfg)
    out = capsys.readouterr().out
    total = sum(p.numel() for p in build(cfg)[1].parameters())
    assert "generator" in out and f"Total params: {get_human_readable_count(total)}" in out
    assert "flops" not in out.lower() and "flops" not in caplog.text.lower()
    assert "model summary callbacks" not in caplog.text  # Lightning's notice that it found a summary besides its own
    with open_dict(cfg):
        cfg.trainer.enable_model_summary = False
    train(cfg)
    assert "Total params" not in capsys.readouterr().out


def test_the_summary_replaces_lightnings_only_where_lightning_would_add_it():
    from omegaconf import OmegaConf
    from pytorch_lightning.callbacks import ModelSummary

    from neuralsde.summary import ParameterSummary, summary_callbacks

    def added(trainer, callbacks=()):
        return [type(cb) for cb in summary_callbacks(OmegaConf.create(trainer), list(callbacks))]

    assert added({}) == added({"enable_model_summary": True}) == [ParameterSummary]
    assert added({"enable_model_summary": False}) == added({"barebones": True}) == []
    assert added({}, [ModelSummary(max_depth=2)]) == []  # a summary configured among the callbacks is kept


def test_the_summary_takes_the_arguments_of_older_lightning(capsys):
    # pyproject allows Lightning 2.2, whose summarize passes neither the training modes (2.3) nor the FLOPs (2.6)
    from neuralsde.summary import ParameterSummary

    data = [(" ", ["0"]), ("Name", ["generator"]), ("Params", ["1.2 K"]), ("FLOPs", ["0"])]
    ParameterSummary.summarize(data, 1234, 1000, 0.005)
    out = capsys.readouterr().out
    assert "generator" in out and "Total params: 1.2 K" in out and "Non-trainable params: 234" in out
    assert "FLOPs" not in out and "train mode" not in out
    ParameterSummary.summarize(data, 1234, 1000, 0.005, {"train": 3, "eval": 1}, 0)
    assert "Modules in train mode: 3" in capsys.readouterr().out


def test_progress_bar_of_a_fast_dev_run_counts_its_one_step(tiny_cfg, capsys):
    cfg = tiny_cfg(steps=1000)
    with open_dict(cfg):
        show_step_bar(cfg, refresh_interval_s=0)
        cfg.trainer.fast_dev_run = True
        cfg.callbacks.pop("metrics")
        cfg.test = False
    train(cfg)
    out = capsys.readouterr().out.replace("\r", "\n")
    assert "sdegan: 100%" in out and "1/1 [" in out and "/1000" not in out


def test_progress_bar_line_is_ended_when_training_fails(tiny_cfg, capsys, monkeypatch):
    # a redirected log had the error glued onto the bar's last draw: "sdegan:  67%|...| 2/3 [...]ERROR ..."
    from sdegan.module import SDEGAN

    step = SDEGAN.training_step

    def failing_step(self, *args, **kwargs):
        if self.steps_taken == 2:
            raise RuntimeError("diverged on purpose")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(SDEGAN, "training_step", failing_step)
    cfg = tiny_cfg(steps=3)
    with open_dict(cfg):
        show_step_bar(cfg, refresh_interval_s=0)
        cfg.test = False
    with pytest.raises(RuntimeError, match="diverged on purpose"):
        train(cfg)
    out = capsys.readouterr().out
    assert "2/3 [" in out and out.endswith("\n")  # drawn where it stopped, its line ended


def test_progress_bar_in_a_file_redraws_at_most_every_interval(tiny_cfg, capsys):
    cfg = tiny_cfg(steps=3)
    with open_dict(cfg):
        show_step_bar(cfg)
        cfg.test = False
    train(cfg)  # captured output is not a terminal: the default interval is 10 s
    out = capsys.readouterr().out.replace("\r", "\n")
    assert "1/3 [" in out and "2/3 [" not in out  # the first step is drawn, the next not within 10 s ...
    assert out.count("3/3 [") == 1 and "train/g_loss" in out.split("3/3 [")[1]  # ... closing draws the last


def test_test_phase_shows_one_test_bar_and_names_each_metric(tiny_cfg, capsys):
    cfg = tiny_cfg(steps=1)
    with open_dict(cfg):
        show_step_bar(cfg)
        cfg.callbacks.metrics.test_metrics = ["marginal_w1", "acf_error"]
    train(cfg)
    captured = capsys.readouterr()
    out = captured.out.replace("\r", "\n")
    assert "Testing:   0%" in out and "Testing: 100%" in out  # made with its total ...
    assert "0/?" not in out and "DataLoader" not in out  # ... not reset and renamed after it was drawn
    assert "metrics" in captured.err and "marginal_w1" in captured.err and "acf_error" in captured.err
    assert "test split, after 1 step\n" in captured.out  # not "1 steps"
