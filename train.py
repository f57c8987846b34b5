"""Train a model: `python train.py experiment=ou_sdegan` (see configs/ for every option)."""
import hydra
from omegaconf import DictConfig

import neuralsde  # noqa: F401  (registers the config resolvers)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from neuralsde.training import metric_for_sweep, reported_plainly, train

    with reported_plainly():
        metrics = train(cfg)
        return metric_for_sweep(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    from neuralsde.override_hints import run_with_hints

    run_with_hints(main, "train")  # a misspelt override Hydra refused: the nearest valid one
