"""Train a model: `python train.py experiment=ou_sdegan` (see configs/ for every option)."""
import hydra
from omegaconf import DictConfig

import neuralsde  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from neuralsde.sweeps import train_for_sweep
    from neuralsde.training import reported_plainly

    with reported_plainly():
        return train_for_sweep(cfg)


if __name__ == "__main__":
    from neuralsde.override_hints import run_with_hints

    run_with_hints(main, "train")  # a misspelt override Hydra refused: the nearest valid one
