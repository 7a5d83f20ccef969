"""The error kinds of every entry point and their exit codes, shared by process.py, ``amf`` (cli/main.py) and
the training side. An ``AmfError`` is a problem the user can act on: it ends in one line on stderr that names
the file or option and what is wrong, and in its ``exit_code``; anything else is an internal error (exit 1, with
its traceback)."""

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_OUTPUT, EXIT_MODEL = 0, 1, 2, 3, 4


class AmfError(Exception):
    """A problem the user can act on; ``kind`` is process.py's name for it, ``exit_code`` its exit status."""

    kind, exit_code = "error", EXIT_INTERNAL


class InputError(AmfError, ValueError):
    """A bad argument or unusable input (exit 2, EXIT_INPUT): the message names the option or file and the problem."""

    kind, exit_code = "input error", EXIT_INPUT


class OutputError(AmfError, OSError):
    """The output cannot be created or written: not writable, or the disk is full (exit 3, EXIT_OUTPUT)."""

    kind, exit_code = "output error", EXIT_OUTPUT


class ModelError(AmfError, RuntimeError):
    """A model is missing or unreadable (a corrupt checkpoint or ensemble), or produced unusable output (exit 4,
    EXIT_MODEL)."""

    kind, exit_code = "model error", EXIT_MODEL
