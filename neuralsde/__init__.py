"""neuralsde-lab: neural SDE generative models of time series (SDE-GANs and latent SDE VAEs)."""

__version__ = "0.1.0"
