"""A local Hugging Face hub cache built in-process, laid out as ``huggingface_hub`` lays it
out, and a guard that records every attempt to open a network connection.

Cache layout (``HF_HUB_CACHE``, by default ``$HF_HOME/hub``)::

    models--ORG--NAME/
      blobs/<etag>                      file contents; etag = sha256 for LFS files
                                        (weights), the git blob sha1 for the others
      refs/<branch>                     the branch's commit hash (40 hex, no newline)
      snapshots/<commit>/<file>         relative symlink -> ../../blobs/<etag>
"""

from __future__ import annotations

import hashlib
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")


def etag(path: Path) -> str:
    """The name the hub client gives a file's blob."""
    data = path.read_bytes()
    if path.suffix in LFS_SUFFIXES:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def commit_of(repo_id: str, branch: str) -> str:
    """A made-up but well-formed commit hash (40 hex digits)."""
    return hashlib.sha1(f"{repo_id}@{branch}".encode()).hexdigest()


def repo_folder(cache: Path, repo_id: str) -> Path:
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def add_revision(cache: Path, repo_id: str, branch: str, model_dir: Path) -> str:
    """Put every file of ``model_dir`` into the cache as the snapshot of ``branch``;
    returns the commit hash that ``refs/<branch>`` now holds."""
    root = repo_folder(cache, repo_id)
    commit = commit_of(repo_id, branch)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    for f in sorted(Path(model_dir).iterdir()):
        blob = root / "blobs" / etag(f)
        if not blob.exists():
            blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    add_ref(cache, repo_id, branch, commit)
    return commit


def add_ref(cache: Path, repo_id: str, branch: str, commit: str) -> None:
    """Point ``refs/<branch>`` at an existing commit (as ``main`` is a repo's last step)."""
    ref = repo_folder(cache, repo_id) / "refs" / branch
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)


# Written into a child process (``-c``) before anything else is imported: every connect /
# name lookup is recorded in $NET_LOG and refused; Unix sockets are allowed.
NETWORK_GUARD = r'''
import os, socket, sys
_log = os.environ["NET_LOG"]

def _record(what):
    with open(_log, "a") as f:
        f.write(repr(what) + "\n")
    raise OSError("network access refused by the test guard: %r" % (what,))

def _connect(self, address, _orig=socket.socket.connect):
    if self.family == socket.AF_UNIX:
        return _orig(self, address)
    _record(("connect", address))

def _connect_ex(self, address, _orig=socket.socket.connect_ex):
    if self.family == socket.AF_UNIX:
        return _orig(self, address)
    _record(("connect_ex", address))

socket.socket.connect = _connect
socket.socket.connect_ex = _connect_ex
socket.create_connection = lambda address, *a, **k: _record(("create_connection", address))
socket.getaddrinfo = lambda host, *a, **k: _record(("getaddrinfo", host))
'''
