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


def check_bool(option: str, value) -> bool:
    """``value`` if it is a bool, else ``bad_option``: Hydra hands ``maybe`` or ``2`` through as they are, and a
    ``bool(...)`` of either was a silent true."""
    if not isinstance(value, bool):
        raise bad_option(option, value, "true or false", f"set {option}=true or {option}=false")
    return value


def check_number(option: str, value, fix: str, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float (above 0 with ``positive``; at least ``minimum``), else ``bad_option``: ``inf``
    passes ``> 0`` tests and then poisons the model, and ``nan`` fails them with a message about positivity."""
    import math
    import numbers

    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and positive:
        ok = float(value) > 0
    if ok and minimum is not None:
        ok = float(value) >= minimum
    if not ok:
        allowed = ("a positive finite number" if positive else "a finite number" if minimum is None
                   else f"a finite number >= {minimum:g}")
        raise bad_option(option, value, allowed, fix)
    return float(value)
