"""Every ``python train.py ...`` command the README shows composes: no documented override is stale."""
import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from neuralsde.solver import SolverConfig
from neuralsde.training import _check_trainer_limits
from tests.conftest import CONFIG_DIR, ROOT


def readme_train_commands() -> list[list[str]]:
    """The overrides of each ``python train.py`` command in README.md (code blocks and inline code), with a
    multirun's comma-separated sweep values cut to their first value (compose takes one job's overrides)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for match in re.finditer(r"python train\.py([^`\n]*)", text):
        args = re.sub(r"<[^>]+>", "RUN", match.group(1).split("#")[0]).split()  # <run> placeholders
        overrides = []
        for arg in args:
            if arg == "-m":
                continue
            key, _, value = arg.partition("=")
            if "," in value and not value.startswith("["):
                value = value.split(",")[0]
            overrides.append(f"{key}={value}" if _ else arg)
        commands.append(overrides)
    return commands


COMMANDS = readme_train_commands()


def test_the_readme_shows_train_commands():
    assert len(COMMANDS) >= 20 and ["trainer=ddp_sim"] in COMMANDS


@pytest.mark.parametrize("overrides", COMMANDS, ids=[" ".join(c) or "(defaults)" for c in COMMANDS])
def test_readme_train_command_composes(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    # what train.py checks before any work: the solver's options and the trainer's limits
    SolverConfig(**OmegaConf.to_container(cfg.solver, resolve=True))
    _check_trainer_limits(cfg)
