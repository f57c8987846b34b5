"""Each real-data SDE-GAN experiment trains a few steps on CPU (data from ../shared/data)."""
import pandas as pd
import pytest
from omegaconf import open_dict

from neuralsde.training import train
from tests.conftest import SHARED_DATA, compose_config, shrink

NEEDS = {"air_quality": "beijing_air_quality", "stocks": "stock_goog_daily", "energy": "energy_appliances",
         "lobster": "lobster_goog", "weights": None}


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_experiment_trains_a_few_steps(name, tmp_path):
    folder = NEEDS[name]
    if folder and not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA / folder} is absent")
    cfg = shrink(compose_config([f"experiment={name}_sdegan"]), tmp_path, steps=3)
    with open_dict(cfg):
        cfg.test = False
        cfg.trainer.log_every_n_steps = 1
        cfg.trainer.val_check_interval = 2  # one validation, with the experiment's own metric options
        if name == "air_quality":
            cfg.data.source.stations = ["Aotizhongxin", "Dongsi"]
    train(cfg)
    log = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    assert log["train/d_loss"].notna().sum() == 3
    assert (tmp_path / "plots" / "samples.png").is_file()
