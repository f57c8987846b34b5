"""Checking the extra keyword options of a torch optimiser (``+model.optimizer.momentum=0.9``) before training.

Both families pass every key of ``model.optimizer`` they do not read themselves to the optimiser's constructor, which
Lightning calls only once training starts: an option that optimiser lacks, or a value it refuses, ended the run after
the data had loaded, in a bare TypeError or ValueError from inside Lightning's hooks.
"""
from __future__ import annotations

import inspect
import re

import torch

from neuralsde.errors import ConfigError


def check_optimizer_options(cls: type[torch.optim.Optimizer], name: str, options: dict, lr: float,
                            lr_options: str = "model.optimizer.lr") -> None:
    """Raise ConfigError unless ``cls(params, lr=lr, **options)`` builds; ``name`` is ``model.optimizer.name``,
    ``lr_options`` the options the family sets the learning rate from."""
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params", "lr")]
    own = [key for key in options if key in ("params", "lr")]
    if own:  # every optimiser takes them: "not an option of adadelta" sent the user looking for another optimiser
        raise ConfigError(f"model.optimizer.{own[0]} is not read: the model passes the optimiser its parameters and "
                          f"its learning rate ({lr_options}). Fix: remove +model.optimizer.{own[0]}"
                          + (f"; set {lr_options} instead." if own[0] == "lr" else "."))
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ConfigError(f"model.optimizer.{unknown[0]} is not an option of model.optimizer.name={name} "
                          f"(torch.optim.{cls.__name__} takes {accepted}). Fix: remove "
                          f"model.optimizer.{unknown[0]}, or choose the optimiser that has it.")
    try:
        cls([torch.zeros(1, requires_grad=True)], lr=lr, **options)
    except (TypeError, ValueError) as err:
        shown = ", ".join(f"model.optimizer.{k}={v!r}" for k, v in options.items())
        key = re.search(r"Invalid (\w+)", str(err))
        named = f"model.optimizer.{key.group(1)}" if key and key.group(1) in options else "the value"
        raise ConfigError(f"{cls.__name__} refused {shown}: {err}. Fix: correct {named} (see the "
                          f"torch.optim.{cls.__name__} documentation).") from err
