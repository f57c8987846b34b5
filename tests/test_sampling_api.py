"""model.sample from Python: no autograd graph kept, and a bad n named."""
from __future__ import annotations

import pytest

from neuralsde.errors import ConfigError
from neuralsde.training import build
from tests.conftest import compose_config

TINY = ["data.source.n_paths=64", "data.source.t_size=8", "data.batch_size=16"]


@pytest.mark.parametrize("experiment", ["ou_sdegan", "ou_latent_sde"])
def test_sample_keeps_no_graph_and_names_bad_n(tmp_path, experiment):
    _, model = build(compose_config([f"experiment={experiment}", *TINY, f"paths.output_dir={tmp_path}"]))
    paths = model.sample(4)
    # was True: the solve's graph was kept, and the metrics warned "Consider using tensor.detach() first"
    assert paths.shape == (4, 8, 2) and not paths.requires_grad
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match=r"n=.* is not valid: expected a positive integer"):
            model.sample(bad)
    with pytest.raises(ConfigError, match="n=0"):
        model.sample_data_units(0)
