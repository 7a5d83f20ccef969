"""The runtime's error kinds; process.py maps each to its exit code (see its docstring)."""


class InputError(ValueError):
    """Unusable input (exit 2): the message names the file and the problem."""


class OutputError(OSError):
    """The output folder cannot be created or written (exit 3)."""


class ModelError(RuntimeError):
    """The shipped model is missing or unreadable, or produced unusable output (exit 4)."""
