"""Exceptions with messages that name the problem (file, line, field)."""

from __future__ import annotations


class MelError(Exception):
    """Base class for errors the `mel` command reports without a traceback."""


class InputError(MelError):
    """Bad user input: the message names the file, line and field where possible."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
            where += ": "
        if field is not None:
            message = f"field '{field}': {message}"
        super().__init__(where + message)
        self.path, self.line, self.field = path, line, field


class ConfigError(MelError):
    """A configuration file or value is invalid."""


class ArtifactMismatch(MelError):
    """An artifact (index, adapter) was made with settings that differ from the ones in use."""


class ModelNotFound(MelError):
    """A model could not be found locally and could not be downloaded."""
