"""User-facing error type: one clear line, exit code 2, never a traceback."""

from __future__ import annotations


class AprError(Exception):
    """An error caused by the user's input or environment (bad file, bad ref, no network...).

    The CLI prints ``error: <message>`` on one line and exits with ``exit_code``.
    Messages name the file or thing at fault, the problem, and what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class FormatError(AprError):
    """A model file is corrupt, truncated, inconsistent or of an unsupported kind."""


class HubError(AprError):
    """A model reference cannot be resolved, downloaded or verified."""
