"""A user's files: written safely (a reader sees the old file or the new one, never half of
one), their sha256, and the one cache folder every derived file goes to.

The cache rule (one home for it: converted pretrained weights in ``CACHE/weights``, the
Fashion-MNIST PNGs in ``CACHE/fashion_mnist``): ``$REID_CACHE`` when set, else
``$XDG_CACHE_HOME/reid`` (the XDG base directory specification), else ``~/.cache/reid``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# The environment variable that moves the cache (read on every call, so a test or a job can set it).
CACHE_ENV = "REID_CACHE"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    The temporary file lives in the same folder so that ``os.replace`` is a rename on one file
    system (atomic on POSIX), and it is fsync'ed first so the rename never exposes a partly
    written file after a power loss. On any error the temporary file is removed and ``path``
    is untouched. A process killed outright leaves its ``.NAME.*.tmp``:
    :func:`remove_stale_temporaries` clears those. The file gets the mode a plain ``open``
    would give it (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process's umask: from /proc on Linux (no change to process state); elsewhere read
    the only way POSIX allows, by setting it and putting it straight back."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files an interrupted :func:`atomic_write` of ``path`` left."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for file in stale:
        file.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """:func:`atomic_write_text` of ``data`` as indented JSON."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def cache_dir() -> Path:
    """``$REID_CACHE``, else ``$XDG_CACHE_HOME/reid``, else ``~/.cache/reid`` (an empty variable
    counts as unset). Not created here: whoever writes into it does, atomically."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "reid"


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks (a large file is never held in
    memory whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
