"""Exceptions for bad input that the user can fix (the CLI prints their message without a traceback)."""


class Step1XEditError(Exception):
    """Base class of every error caused by input the user controls: files, images, arguments, checkpoints."""


class InvalidImageError(Step1XEditError, ValueError):
    """An image file that cannot be read, is too large, or cannot be edited."""


class InvalidPromptError(Step1XEditError, ValueError):
    """An instruction that cannot be encoded."""


class CheckpointError(Step1XEditError, ValueError):
    """A model directory or weights file that is missing, partial, of the wrong version, or unsafe."""


class DataFormatError(Step1XEditError, ValueError):
    """A data file (Parquet shard, metadata JSON, scores file, benchmark copy) that is malformed."""


class InvalidValueError(Step1XEditError, ValueError):
    """A number or string outside what a field accepts (the message names the field, the value and the range)."""


class UnsupportedModeError(Step1XEditError, ValueError):
    """A memory, speed or multi-GPU mode this machine, its packages or the other chosen modes cannot run (never
    silently replaced by another)."""
