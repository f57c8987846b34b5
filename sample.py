"""`python sample.py ckpt_path=PATH ...` (see configs/sample.yaml)."""
import hydra
from omegaconf import DictConfig

import neuralsde  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    from neuralsde.commands import run_sample
    from neuralsde.training import reported_plainly

    with reported_plainly():
        run_sample(cfg)


if __name__ == "__main__":
    from neuralsde.override_hints import run_with_hints

    run_with_hints(main, "sample")  # a misspelt override Hydra refused: the nearest valid one
