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
