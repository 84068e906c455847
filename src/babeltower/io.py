"""Atomic outputs, hashes and provenance shared by every concern.

Every output directory or result file is written under a temporary name and renamed
into place, so an interrupted run never leaves something that looks complete.
Every result records how it was made (``provenance()``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from babeltower.errors import BabelError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (sorted keys), e.g. a config."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BabelError(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:   # Ctrl-C mid-write: no half-written temporary left behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def refuse_existing(out: str | os.PathLike | None, overwrite: bool) -> None:
    """A finished output is not silently replaced: the one refusal every writer uses."""
    if out is not None and Path(out).exists() and not overwrite:
        raise BabelError(f"output {out} already exists (pass --overwrite to replace it)")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` only if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary directory is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = _tmp_sibling(path)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names: tuple[str, ...] = (
    "babeltower", "torch", "transformers", "tokenizers", "datasets", "numpy", "safetensors",
)) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def provenance(config: Any = None, seed: int | None = None, data_hashes: dict | None = None,
               **extra: Any) -> dict:
    """What every result file carries: config (and its hash), versions, seed, data hashes."""
    rec = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(),
    }
    if config is not None:
        cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
        rec["config"] = cfg
        rec["config_sha256"] = sha256_json(cfg)
    if seed is not None:
        rec["seed"] = seed
    if data_hashes is not None:
        rec["data_sha256"] = data_hashes
    rec.update(extra)
    return rec


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise BabelError(f"{what} not found: {p}")
    return p


def check_output_path(path: str | os.PathLike, what: str = "output",
                      directory: bool = False) -> Path:
    """Refuse, before any work, an output path that cannot be written: a name over 255
    bytes, a parent that is a file (``FILE/sub``), a place where no file can be created
    (``/proc/x``, a read-only or foreign directory), or - for a file output - an existing
    directory (and for a directory output an existing file). Nothing is left behind."""
    import tempfile

    p = Path(path)
    long = [part for part in p.parts if len(os.fsencode(part)) > 255]
    if long:
        raise BabelError(f"{what} {str(p)[:80]}...: a name in it is longer than 255 bytes")
    try:
        if directory and p.exists() and not p.is_dir():
            raise BabelError(f"{what} {p} exists and is not a directory")
        if not directory and p.is_dir():
            raise BabelError(f"{what} {p} is a directory; expected a file path")
        where = p.absolute().parent
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise BabelError(f"cannot write {what} {p}: {where} is not a directory")
        try:
            fd, probe = tempfile.mkstemp(dir=where, prefix=".babeltower-write-check-")
        except OSError as e:
            raise BabelError(f"cannot write {what} {p}: no file can be created in {where} "
                             f"({e.strerror or e})") from None
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BabelError(f"cannot write {what} {p}: {e.strerror or e}") from None
    return p


MAX_TEXT_BYTES = 64 << 20   # configs, suites, programs, metrics: far below this


def read_text_file(path: str | os.PathLike, what: str = "file",
                   max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file; missing, a directory, a FIFO or device (which
    could block or never end: /dev/zero), larger than ``max_bytes``, unreadable, binary
    or non-UTF-8 is a one-line BabelError (never a hang or a traceback)."""
    p = Path(path)
    if not p.exists():
        raise BabelError(f"{what} not found: {p}")
    if p.is_dir():
        raise BabelError(f"{what} {p} is a directory; expected a file")
    if not p.is_file():
        raise BabelError(f"{what} {p} is not a regular file (a FIFO, socket or device); "
                         "expected a file")
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise BabelError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise BabelError(f"{what} {p} is larger than {max_bytes >> 20} MiB; expected a "
                         "small text file")
    if b"\0" in data:
        raise BabelError(f"{what} {p} is a binary file; expected UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BabelError(f"{what} {p} is not UTF-8 text (bad byte at offset {e.start})") from None


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """JSON from a file; a missing, binary or corrupt file is a one-line BabelError."""
    p = Path(path)
    text = read_text_file(p, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BabelError(f"corrupt {what} {p}: {e.msg} (line {e.lineno})") from None


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict:
    """A YAML file whose top level is a mapping; missing, binary, unparsable or
    non-mapping files are a one-line BabelError."""
    import yaml

    p = Path(path)
    text = read_text_file(p, what)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise BabelError(f"cannot parse {what} {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BabelError(f"{what} {p} must be a mapping of fields at the top level")
    return data


class PartialRows:
    """Append-only JSONL of finished result rows, so an interrupted series resumes.

    ``PartialRows(path, key)`` reads what a previous run finished (grouped by ``row[key]``,
    e.g. the checkpoint name; a line cut by an interruption is ignored), ``append(rows)``
    records newly finished rows, and ``close()`` removes the file once the final result
    has been written atomically. ``path=None`` disables it (nothing read or written).
    """

    def __init__(self, path: str | os.PathLike | None, key: str):
        self.path = Path(path) if path is not None else None
        self.key = key
        self.done: dict[str, list[dict]] = {}
        if self.path is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.done.setdefault(row[key], []).append(row)

    def append(self, rows: list[dict]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, default=str) + "\n" for r in rows)

    def close(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
