"""Errors that name what was received, what was expected, and the fix."""


class ConfigError(ValueError):
    """A configuration value is invalid or inconsistent."""


class DataError(ValueError):
    """Input data is malformed, missing or inconsistent."""


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or from an incompatible model or config."""


def bad_option(option: str, received, allowed: str, fix: str, cls=ConfigError) -> ValueError:
    """Build an error in the framework's format: option, value received, what is allowed, fix."""
    return cls(f"{option}={received!r} is not valid: expected {allowed}. Fix: {fix}")


class TrainingDivergedError(ValueError):
    """A loss became NaN or infinite."""


# Errors that already name the option, the value and the fix: shown as they are, without wrappers or tracebacks.
OUR_ERRORS = (ConfigError, DataError, CheckpointError, TrainingDivergedError)


def check_int(option: str, value, fix: str, minimum: int | None = 1, also: str = "") -> int:
    """``value`` as an int of at least ``minimum`` (None: any), else ``bad_option``. Hydra hands ``abc``, ``2.5`` and
    ``true`` through as they are, and ``bool`` is an ``int`` subclass: all three are refused here. ``also``: an
    alternative the caller handles itself, named in the message (e.g. ", or null for ...")."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (minimum is not None and value < minimum):
        allowed = ("an integer" if minimum is None else "a positive integer" if minimum == 1
                   else f"an integer of at least {minimum}")
        raise bad_option(option, value, allowed + also, fix)
    return int(value)
