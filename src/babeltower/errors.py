"""One exception type for every user-facing failure.

The CLI turns a ``BabelError`` into one line on stderr and a non-zero exit code;
library users catch it like any other exception. Raise it for bad input (missing
file, unknown language, broken config, corrupt checkpoint), never for bugs.
"""


class BabelError(Exception):
    """A failure caused by the user's input or environment, with a one-line message."""

    exit_code = 2

    def __init__(self, message: str):
        # keep messages to one line: the CLI prints exactly this
        super().__init__(" ".join(str(message).split()))


def validation_error(error, where: str) -> BabelError:
    """A pydantic ValidationError as one line naming the first bad field (and how many more)."""
    errs = error.errors()
    first = errs[0]
    loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
    msg = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return BabelError(f"{where}: {loc}: {msg}{more}")
