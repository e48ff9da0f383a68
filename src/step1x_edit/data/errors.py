"""Errors of the data engine that the user can fix (the CLI prints them without a traceback)."""

from ..errors import Step1XEditError


class DataConfigError(Step1XEditError, ValueError):
    """An invalid data-generation setting: count, resolution, aspect ratio, tasks, shard size."""
