"""A refused resume names the settings that differ from the checkpoint's, with the checkpoint's values."""
from __future__ import annotations

import pytest
import torch

from neuralsde.errors import CheckpointError
from neuralsde.training import _changed_settings, _check_resume_compatible, build
from tests.conftest import compose_config

TINY = ["data.source.t_size=8", "data.batch_size=16", "model.train_steps=4"]


def test_refused_resume_names_the_changed_setting(tmp_path):
    _, model = build(compose_config([*TINY, "data.source.n_paths=64", f"paths.output_dir={tmp_path}"]))
    ckpt = tmp_path / "a.ckpt"

    checkpoint = {"state_dict": model.state_dict(), "neuralsde": {}}
    model.on_save_checkpoint(checkpoint)
    checkpoint["neuralsde"]["train_step"] = 2
    torch.save(checkpoint, ckpt)
    _, other = build(compose_config([*TINY, "data.source.n_paths=80", f"paths.output_dir={tmp_path}"]))
    with pytest.raises(CheckpointError, match=r"the dataset differs.*Fix: resume with the checkpoint's values of the "
                                              r"settings that differ: data.source.n_paths=64, or set"):
        _check_resume_compatible(str(ckpt), other)


def test_changed_settings_ignores_train_steps():
    saved = {"data": {"batch_size": 16}, "model": {"train_steps": 4, "lr": 1}}
    assert _changed_settings(saved, {"data": {"batch_size": 32}, "model": {"train_steps": 8, "lr": 1}}) == \
        ["data.batch_size=16"]
    assert _changed_settings(None, saved) == []
