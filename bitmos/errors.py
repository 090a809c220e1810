"""Errors a user can cause and fix (bad config, corrupt file, unsupported layer, ...).

The CLI prints these as one line without a traceback; everything else is a bug.
"""


class BitmosUserError(ValueError):
    """Base class for errors caused by the user's input."""


class ConfigError(BitmosUserError):
    """An accelerator or model configuration field is missing, of the wrong type or out of range."""


class FormatError(BitmosUserError):
    """A file (checkpoint, export, program, memory image) is corrupt, truncated or of another version."""


class DecodeError(BitmosUserError):
    """An instruction word has an illegal opcode or field."""


class UnsupportedError(BitmosUserError):
    """A model, layer or operation the accelerator or compiler cannot handle."""
