"""One exception type for every user-facing failure, and the environment failures
(full disk, no permission) recognised whatever library raised them.

The CLI turns a ``BabelError`` into one line on stderr and a non-zero exit code;
library users catch it like any other exception. Raise it for bad input (missing
file, unknown language, broken config, corrupt checkpoint), never for bugs.
"""

from __future__ import annotations

import errno
import re


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


# What each errno means to a user, and what to do about it.
_ERRNO_MESSAGES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.ENAMETOOLONG: "file name too long",
}
# Libraries that do their own I/O do not raise OSError on a full disk: safetensors
# (Rust) says "... (os error 28)", torch's zip writer says "unexpected pos N vs M" when
# a write came up short (measured on a full tmpfs; a short write is a full disk there).
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")
_SHORT_WRITE_IN_TEXT = re.compile(r"unexpected pos \d+ vs \d+")


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def environment_error(exc: BaseException) -> BabelError | None:
    """A full disk, a quota or a permission failure anywhere in ``exc``'s chain, as one
    line; None when the exception is something else (a bug, or an error already named)."""
    for e in _chain(exc):
        code, where = None, ""
        if isinstance(e, OSError) and e.errno in _ERRNO_MESSAGES:
            code = e.errno
            where = f" ({e.filename})" if e.filename else ""
        elif m := _OS_ERROR_IN_TEXT.search(str(e)):
            code = int(m.group(1)) if int(m.group(1)) in _ERRNO_MESSAGES else None
        elif _SHORT_WRITE_IN_TEXT.search(str(e)):
            code = errno.ENOSPC
        if code is not None:
            what = _ERRNO_MESSAGES[code]
            advice = ("free some space and run the same command again"
                      if code in (errno.ENOSPC, errno.EDQUOT)
                      else "check the path and run the same command again"
                      if code in (errno.ENOTDIR, errno.ENAMETOOLONG)
                      else "check the path's permissions and run the same command again")
            return BabelError(f"{what}{where} while running this command; {advice}")
    return None
