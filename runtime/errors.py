"""The runtime's error kinds and the exit codes they map to, shared by process.py and ``amf predict``."""

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_OUTPUT, EXIT_MODEL = 0, 1, 2, 3, 4


class InputError(ValueError):
    """Unusable input (exit 2, EXIT_INPUT): the message names the file and the problem."""


class OutputError(OSError):
    """The output folder cannot be created or written (exit 3, EXIT_OUTPUT)."""


class ModelError(RuntimeError):
    """The shipped model is missing or unreadable, or produced unusable output (exit 4, EXIT_MODEL)."""
