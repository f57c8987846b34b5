"""The default experiment end to end: fast_dev_run, a few real steps, artefacts, seeding."""
import pandas as pd
import pytest
from omegaconf import open_dict

from neuralsde.training import train


def test_fast_dev_run(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    with open_dict(cfg):
        cfg.trainer.fast_dev_run = True
    metrics = train(cfg)
    assert "train/d_loss" in metrics


def test_few_steps_write_checkpoint_metrics_and_plot(tiny_cfg, tmp_path):
    cfg = tiny_cfg(steps=4)
    metrics = train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    csv = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    assert {"train/d_loss", "train/g_loss", "val/w_dist"} <= set(csv.columns)
    assert csv["train/step"].max() == 4
    assert (tmp_path / "plots" / "samples.png").stat().st_size > 1000
    assert (tmp_path / "config.yaml").is_file()
    assert "test/w_dist" in metrics


def test_same_seed_same_losses(tiny_cfg, tmp_path):
    runs = []
    for i in range(2):
        cfg = tiny_cfg(steps=3)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / f"run{i}")
            cfg.test = False
            cfg.trainer.log_every_n_steps = 1
        train(cfg)
        runs.append(pd.read_csv(tmp_path / f"run{i}" / "csv" / "metrics.csv"))
    a, b = (r["train/d_loss"].dropna().to_numpy() for r in runs)
    assert len(a) == 3
    assert (a == b).all()


@pytest.mark.parametrize("overrides", [["solver=midpoint"], ["model.lipschitz=gradient_penalty"],
                                       ["model.update=alternating"], ["solver.backend=torchsde"],
                                       ["solver.backend=torchsde", "solver.brownian=tree"],
                                       ["model.discriminator.interpolation=hermite"]])
def test_options_train(tiny_cfg, overrides):
    cfg = tiny_cfg(overrides, steps=2)
    with open_dict(cfg):
        cfg.test = False
    metrics = train(cfg)
    assert metrics["train/d_loss"] == metrics["train/d_loss"]  # finite, not NaN
