"""The multi-channel experiments' signature-MMD path scale keeps their real paths from dominating the kernel
(``neuralsde.metrics.sig_mmd``: at scale 1 air quality's real vs real MMD² is -9e3 (-6e4, 1e4))."""
import hydra
import pytest
import torch
from omegaconf import open_dict

from neuralsde.metrics.sig_mmd import signature_mmd
from neuralsde.metrics.suite import MetricOptions
from tests.conftest import SHARED_DATA, compose_config

# experiment -> (data folder, whether real vs real is far from zero at scale 1)
EXPERIMENTS = {"air_quality_sdegan": ("beijing_air_quality", True), "stocks_sdegan": ("stock_goog_daily", True),
               "lobster_sdegan": ("lobster_goog", False), "energy_sdegan": ("energy_appliances", True),
               "weights_sdegan": ("weights", False)}


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_configured_path_scale_keeps_the_kernel_well_behaved(experiment, tmp_path):
    folder, wild_at_1 = EXPERIMENTS[experiment]
    if not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"{folder} not in {SHARED_DATA}")
    cfg = compose_config([f"experiment={experiment}", f"paths.data_dir={SHARED_DATA}", f"paths.root_dir={tmp_path}"])
    with open_dict(cfg):
        if "cache_dir" in cfg.data.source:
            cfg.data.source.cache_dir = str(tmp_path / "cache")
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    real = dm.train[torch.randperm(len(dm.train), generator=torch.Generator().manual_seed(0))[:256]]
    options = MetricOptions(**cfg.callbacks.metrics.options)
    assert options.sig_path_scale < 1
    kwargs = dict(kind=options.sig_kind, depth=options.sig_depth, n_boot=0)
    estimate = signature_mmd(real[:128], real[128:], path_scale=options.sig_path_scale, **kwargs).mmd
    assert abs(estimate) < 2  # real vs real: near zero
    if wild_at_1:
        assert abs(signature_mmd(real[:128], real[128:], path_scale=1.0, **kwargs).mmd) > 100
