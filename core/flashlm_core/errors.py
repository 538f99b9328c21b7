"""Typed errors shared by training, export and runtime (stdlib only)."""


class FlashLMError(Exception):
    """Base class: every error we raise on purpose says what is wrong and what to do."""


class ConfigError(FlashLMError, ValueError):
    """A configuration value or file is invalid."""


class DataError(FlashLMError):
    """The corpus or prepared data is missing, empty or unusable."""


class CheckpointError(FlashLMError):
    """A checkpoint or export folder is missing, corrupt or from a newer version."""


class TrainingDivergedError(FlashLMError):
    """The loss became non-finite; the last good checkpoint is kept."""


class ExportError(FlashLMError):
    """An ONNX export failed or did not pass its validation gates."""


class MissingExtraError(FlashLMError):
    """An optional dependency group is not installed."""
