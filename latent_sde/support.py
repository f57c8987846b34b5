"""Validation of the latent SDE's options and solver, and the Gaussian KL of z0."""
from __future__ import annotations

import torch

from neuralsde.errors import ConfigError, bad_option, check_bool, check_int, check_number
from neuralsde.solver import SolverConfig

# (method, adjoint) combinations whose logqp gradients were checked against direct backpropagation
# (torchsde 0.2.6, float64, same Brownian sample); see tests/test_latent_sde.py.
LOGQP_SUPPORTED = {("reversible_heun", True), ("reversible_heun", False), ("midpoint", True), ("midpoint", False),
                   ("euler_heun", True), ("euler_heun", False)}


def check_logqp_support(solver: SolverConfig) -> None:
    """Raise ConfigError before training unless ``solver`` supports ``logqp=True``. (The fast backend has the KL
    path term for both of its methods, ``neuralsde.fast.logqp``.)"""
    if (solver.method, bool(solver.adjoint)) not in LOGQP_SUPPORTED:
        ok = sorted(f"{m} (adjoint={a})" for m, a in LOGQP_SUPPORTED)
        raise ConfigError(f"solver.method={solver.method!r} with solver.adjoint={solver.adjoint} does not support "
                          f"logqp=True in torchsde. Supported: {ok}. Fix: use solver=reversible_heun.")


def check_options(*, latent_size, context_size, hidden_size, num_layers, diffusion: dict, optimizer: dict,
                  kl_anneal_steps, learn_prior_z0, diffusion_warn_threshold, val_seed) -> None:
    defaults = {"latent_size": 4, "context_size": 16, "hidden_size": 32, "num_layers": 2, "diffusion.hidden_size": 16}
    for key, value in (("latent_size", latent_size), ("context_size", context_size),
                       ("hidden_size", hidden_size), ("num_layers", num_layers),
                       ("diffusion.hidden_size", diffusion["hidden_size"])):
        check_int(f"model.{key}", value, f"e.g. model.{key}={defaults[key]}")
    check_number("model.diffusion.floor", diffusion["floor"], "e.g. model.diffusion.floor=1e-3", minimum=0)
    check_number("model.diffusion.scale", diffusion["scale"], "e.g. model.diffusion.scale=1.0", positive=True)
    check_number("model.optimizer.lr", optimizer["lr"], "e.g. model.optimizer.lr=1e-2", positive=True)
    decay = optimizer["lr_decay"]
    if not (check_number("model.optimizer.lr_decay", decay, "e.g. model.optimizer.lr_decay=0.999 (1.0: constant)",
                         positive=True) <= 1):
        raise bad_option("model.optimizer.lr_decay", decay, "a per-step factor in (0, 1]",
                         "e.g. model.optimizer.lr_decay=0.999 (1.0: constant)")
    check_number("model.optimizer.diffusion_lr_factor", optimizer["diffusion_lr_factor"],
                 "e.g. model.optimizer.diffusion_lr_factor=1.0", positive=True)
    # 2.5 was truncated to 2 and true read as 1, without a word.
    check_int("model.kl_anneal_steps", kl_anneal_steps, "e.g. model.kl_anneal_steps=100", minimum=0,
              also=" (0: no annealing)")
    check_bool("model.learn_prior_z0", learn_prior_z0)
    # Below zero the collapse warning could never fire.
    check_number("model.diffusion_warn_threshold", diffusion_warn_threshold,
                 "e.g. model.diffusion_warn_threshold=1e-2 (0: never warn)", minimum=0)
    check_int("model.val_seed", val_seed, "e.g. model.val_seed=0", minimum=None)


def check_section_keys(section: str, given, known: tuple[str, ...]) -> None:
    """Refuse a key of ``section`` that the model does not read: ``+model.diffusion.flor=0.05`` was merged with the
    defaults and ignored (the floor stayed 1e-3), and a mistyped encoder or likelihood key was named only as
    "in model.<section>"."""
    import difflib

    for key in given:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            fix = (f"{section}.{near[0]}={given[key]}" if near else f"remove +{section}.{key}")
            raise ConfigError(f"{section}.{key} is not an option of {section} (it takes {list(known)}). Fix: {fix}")


def kl_normal(mean_q: torch.Tensor, log_std_q: torch.Tensor, mean_p: torch.Tensor,
              log_std_p: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean_q, std_q^2) || N(mean_p, std_p^2)); broadcasts, e.g. ``(batch, d)`` and ``(d,)``."""
    var_ratio = torch.exp(2 * (log_std_q - log_std_p))
    t = ((mean_q - mean_p) / log_std_p.exp()) ** 2
    return 0.5 * (var_ratio + t - 1) - (log_std_q - log_std_p)
