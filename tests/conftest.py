"""Compose the real Hydra config and shrink it for tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")
SHARED_DATA = Path(os.environ.get("NEURALSDE_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# One thread: tiny tensors gain nothing from more, and subprocess tests (DDP) would oversubscribe 2 cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """The real config, composed with ``overrides`` (as on the command line)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)


def shrink(cfg: DictConfig, out_dir: Path, steps: int = 2) -> DictConfig:
    """Tiny sizes, CPU, output under ``out_dir``, data read from ../shared/data."""
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir / "logs")
        cfg.paths.data_dir = str(SHARED_DATA)
        cfg.extras.print_config = False
        src = cfg.data.source
        if "cache_dir" in src:
            src.cache_dir = str(out_dir / "cache")
        if "n_paths" in src:
            src.n_paths = 64
        if "t_size" in src:
            src.t_size = 16
        cfg.data.batch_size = 16
        cfg.data.eval_batch_size = 32
        cfg.model.train_steps = steps
        if "swa_start" in cfg.model:
            cfg.model.swa_start = 1
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.val_check_interval = 1
        cfg.trainer.enable_model_summary = False
        cfg.trainer.enable_progress_bar = False
        cfg.callbacks.pop("progress_bar", None)
        if "metrics" in cfg.callbacks:
            cfg.callbacks.metrics.n_samples = 32
            cfg.callbacks.metrics.options.update(n_boot=20, classifier_epochs=2, forecast_epochs=2)
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(overrides=None, steps: int = 2):
        return shrink(compose_config(overrides), tmp_path, steps)
    return make
