"""LatentSDE.from_checkpoint on the wrong file names the problem."""
from __future__ import annotations

import pytest
import torch

from latent_sde.module import LatentSDE
from neuralsde.errors import CheckpointError


def test_from_checkpoint_refuses_other_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        LatentSDE.from_checkpoint(tmp_path / "none.ckpt")
    sdegan = tmp_path / "sdegan.ckpt"
    torch.save({"neuralsde": {"family": "sdegan"}, "state_dict": {}}, sdegan)
    with pytest.raises(CheckpointError, match=r"holds a 'sdegan' model, not a latent SDE. Fix: .*load_model"):
        LatentSDE.from_checkpoint(sdegan)
