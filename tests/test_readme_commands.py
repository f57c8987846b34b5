"""Every ``python train.py`` / ``eval.py`` / ``sample.py`` command the README shows composes: no documented override
is stale."""
import re
import shlex
import shutil

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from neuralsde.config_checks import check_trainer_limits
from neuralsde.solver import SolverConfig
from tests.conftest import CONFIG_DIR, ROOT


def readme_commands() -> list[tuple[str, list[str]]]:
    """``(config name, overrides)`` of each ``python {train,eval,sample}.py`` command in README.md (code blocks and
    inline code), with a multirun's comma-separated sweep values cut to their first value (compose takes one job's
    overrides)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for match in re.finditer(r"python (train|eval|sample)\.py([^`\n]*)", text):
        # <run> placeholders; quoted arguments split as a shell splits them
        args = shlex.split(re.sub(r"<[^>]+>", "RUN", match.group(2).split("#")[0]))
        overrides = []
        for arg in args:
            if arg == "-m":
                continue
            key, _, value = arg.partition("=")
            if "," in value and not value.startswith("["):
                value = value.split(",")[0]
            overrides.append(f"{key}={value}" if _ else arg)
        commands.append((match.group(1), overrides))
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 25 and ("train", ["trainer=ddp_sim"]) in COMMANDS
    assert {name for name, _ in COMMANDS} == {"train", "eval", "sample"}


@pytest.mark.parametrize("name, overrides", COMMANDS, ids=[f"{n} {' '.join(o)}" for n, o in COMMANDS])
def test_readme_command_composes(name, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    if name == "train":  # what train.py checks before any work: the solver's options and the trainer's limits
        SolverConfig(**OmegaConf.to_container(cfg.solver, resolve=True))
        check_trainer_limits(cfg)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make (a slim image may lack it)")
def test_make_format_keeps_the_code_as_written():
    """``make format`` ran ``ruff format .``, which rewrote 117 hand-wrapped files (+3553/-1416 lines); it lints and
    fixes as the pre-commit hook does."""
    import subprocess

    res = subprocess.run(["make", "-n", "format"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "ruff check --fix ." in res.stdout and "ruff format" not in res.stdout
