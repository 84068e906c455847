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
