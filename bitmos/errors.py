"""Errors a user can cause and fix (bad config, corrupt file, unsupported layer, ...).

The CLI prints these as one line without a traceback; everything else is a bug.
"""


class BitmosUserError(ValueError):
    """Base class for errors caused by the user's input.

    ``field`` names the config or model field the error is about, when there is one (a program that
    needs more SBUF lines carries ``field="sbuf_kib"``), so callers act on it without parsing the text.
    """

    def __init__(self, message: str = "", *, field: str | None = None):
        super().__init__(message)
        self.field = field


class ConfigError(BitmosUserError):
    """An accelerator or model configuration field is missing, of the wrong type or out of range."""


class FormatError(BitmosUserError):
    """A file (checkpoint, export, program, memory image) is corrupt, truncated or of another version."""


class DecodeError(BitmosUserError):
    """An instruction word has an illegal opcode or field."""


class UnsupportedError(BitmosUserError):
    """A model, layer or operation the accelerator or compiler cannot handle."""
