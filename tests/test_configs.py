"""Every option of every config group composes and instantiates (tiny sizes, no training)."""
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from neuralsde.config_checks import check_job
from neuralsde.data.preprocessing import split_by_series
from neuralsde.errors import ConfigError
from neuralsde.training import _instantiate_all, build, instantiate
from tests.conftest import CONFIG_DIR, SHARED_DATA, compose_config, shrink

SHARED_FILES = {"air_quality": "beijing_air_quality", "stocks": "stock_goog_daily", "energy": "energy_appliances",
                "lobster": "lobster_goog"}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def _needs(name: str):
    folder = SHARED_FILES.get(name)
    if folder and not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA / folder} is absent")


def _csv_file(tmp_path: Path) -> str:
    t = torch.arange(40.0)
    rows = ["time,a,b"] + [f"{float(x)},{float(torch.sin(x))},{float(torch.cos(x))}" for x in t]
    path = tmp_path / "series.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


CASES = ([("data", o) for o in _options("data")] + [("model", o) for o in _options("model")]
         + [("solver", o) for o in _options("solver")] + [("experiment", o) for o in _options("experiment")])


@pytest.mark.parametrize("group,option", CASES)
def test_data_model_solver_experiment_options_build(group, option, tmp_path):
    name = option if group != "experiment" else option.split("_sdegan")[0].split("_latent")[0]
    _needs(name)
    overrides = [f"{group}={option}"]
    if option == "csv":
        overrides.append(f"data.source.path={_csv_file(tmp_path)}")
        overrides += ["data.source.window_length=8", "data.split_by=time"]  # overlapping windows: split by time
    cfg = shrink(compose_config(overrides), tmp_path)
    dm, model = build(cfg)
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape[-1] == 1 + dm.data_size and batch[0].shape[1] == dm.times.numel()
    with torch.no_grad():
        sample = model.sample(3)
    assert sample.shape == (3, dm.times.numel(), 1 + dm.data_size)


@pytest.mark.parametrize("group,option", [("callbacks", o) for o in _options("callbacks")]
                         + [("logger", o) for o in _options("logger")]
                         + [("trainer", o) for o in _options("trainer")]
                         + [("debug", o) for o in _options("debug")])
def test_runtime_options_instantiate(group, option, tmp_path):
    composed = compose_config([f"{group}={option}"])
    accelerator = composed.trainer.get("accelerator")
    if accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cfg = shrink(composed, tmp_path)
    with open_dict(cfg):
        cfg.trainer.accelerator = accelerator if accelerator != "auto" else "cpu"
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert trainer is not None
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            import wandb
            wandb.finish()


def test_default_and_paper_recipes_are_the_readmes():
    # README, "What a run does": the default run and experiment=ou_sdegan_paper, with the numbers it states.
    default = compose_config([])
    assert compose_config(["experiment=ou_sdegan"]) == default
    src = default.data.source
    assert (src.n_paths, src.t_size, src.mu, src.theta, src.sigma, src.drop_fraction) == (8192, 64, 0.02, 0.1, 0.4, 0.3)
    assert default.data.batch_size == 128 and default.model.train_steps == 2000 and default.threads == 1
    assert (default.model.optimizer.g_lr, default.model.optimizer.d_lr) == (1e-2, 5e-2)
    solver = (default.solver.method, default.solver.backend, default.model.lipschitz)
    assert solver == ("reversible_heun", "fast", "clip")
    assert default.logger.get("csv") is not None and "wandb" not in default.logger
    paper = compose_config(["experiment=ou_sdegan_paper"])
    assert (paper.data.batch_size, paper.model.train_steps, paper.model.swa_start) == (1024, 10000, 5000)
    assert (paper.model.optimizer.g_lr, paper.model.optimizer.d_lr) == (2e-4, 1e-3)
    assert paper.model.optimizer.name == default.model.optimizer.name == "adadelta"
    # torchsde's examples/sde_gan.py: init_mult1=3 (initial network), init_mult2=0.5 (drift and diffusion)
    assert (paper.model.generator.initial_mult, paper.model.generator.field_mult) == (3.0, 0.5)
    assert (default.model.generator.initial_mult, default.model.generator.field_mult) == (1.0, 1.0)
    assert (paper.data.normalize, default.data.normalize) == ("initial", "standard")  # t = 0 statistics, as there
    assert paper.callbacks.metrics.options.sig_path_scale == 0.17  # paths in t = 0 units reach ~18
    # its vector fields read t = 0..63 (ts = torch.linspace(0, t_size - 1, t_size) there), not t / 63
    assert (paper.model.generator.time_input, paper.model.discriminator.time_input) == ("index", "index")
    train, val, test = split_by_series(paper.data.source.n_paths, paper.data.split_fractions, paper.data.seed)
    assert (len(train), len(val), len(test)) == (8192, 1024, 1024)  # the paper trains on 8,192 paths
    assert (default.model.generator.time_input, default.model.discriminator.time_input) == ("unit", "unit")


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_passes_the_checks_made_before_any_work(experiment):
    """As composed, unshrunk (what `python train.py experiment=...` runs; the build test above shrinks sizes):
    required options, trainer limits, seed, threads, solver and the data module's options (no data are loaded)."""
    check_job(compose_config([f"experiment={experiment}"]))


def _compose_with_local(tmp_path: Path, text: str):
    """The train config composed from a copy of configs/ whose local/default.yaml holds ``text``."""
    import shutil

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    (configs / "local" / "default.yaml").write_text(text)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        return compose(config_name="train")


def test_a_local_file_without_the_global_package_line_is_refused_not_ignored(tmp_path):
    """configs/local/default.yaml written as `paths: {data_dir: ...}` landed at local.paths.data_dir, where nothing
    reads it: the run silently used datasets/ (and tried to download there)."""
    cfg = _compose_with_local(tmp_path, "paths:\n  data_dir: /data/mine\nthreads: 2\n")
    assert cfg.paths.data_dir != "/data/mine"
    with pytest.raises(ConfigError, match=r"local\.paths\.data_dir, local\.threads.*# @package _global_"):
        check_job(cfg)
    cfg = _compose_with_local(tmp_path / "global", "# @package _global_\npaths:\n  data_dir: /data/mine\n")
    assert cfg.paths.data_dir == "/data/mine" and "local" not in cfg
    check_job(cfg)
    check_job(_compose_with_local(tmp_path / "empty", ""))
