"""neuralsde-lab: neural SDE generative models of time series (SDE-GANs and latent SDE VAEs)."""
import os

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

__version__ = "0.1.0"


def launch_dir() -> str:
    """Where the command was started: Hydra's ``runtime.cwd`` inside a job, the working directory before one (a
    sweeper resolves ``hydra.sweep.dir``, which lies under ``paths.root_dir``, before any job has a Hydra config)."""
    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


# Registered on import: the entry points import this package before Hydra composes their config.
OmegaConf.register_new_resolver("launch_dir", launch_dir, replace=True)
