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


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, sync: bool = True) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    The temporary file lives in the same folder so that ``os.replace`` is a rename on one file
    system (atomic on POSIX), and it is fsync'ed first so the rename never exposes a partly
    written file after a power loss. On any error the temporary file is removed and ``path``
    is untouched; a failed write (a full disk, a quota) is an ``OSError`` naming ``path``, also
    when the writer (torch.save, zipfile) turned the file system's error into one of its own.
    A process killed outright leaves its ``.NAME.PID.*.tmp``: :func:`remove_stale_temporaries`
    clears those of dead processes. The file gets the mode a plain ``open`` would give it
    (0666 less the umask), not mkstemp's private 0600.

    ``sync=False`` skips the fsync, for a caller that writes many small files and makes them
    durable together with one :func:`sync_files` before it writes the file that lists them
    (``reid crops``: thousands of crops, then ``tracklets.csv``); the rename is still atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    handle: _WriteErrors | None = None
    written = False
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as raw:
            handle = _WriteErrors(raw)
            write(handle)  # type: ignore[arg-type]
            written = True
            raw.flush()
            if sync:
                os.fsync(raw.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        Path(tmp_name).unlink(missing_ok=True)
        # The file system's own error: a failed write() inside the writer, or flush/fsync/close after it.
        failed = handle.error if handle is not None and handle.error is not None else (
            err if written and isinstance(err, OSError) else None)
        if failed is None:
            raise
        error = OSError(f"{path}: could not be written ({failed.strerror or failed}); the previous file, if any, "
                        "is unchanged")
        error.errno = failed.errno  # for callers that tell a full disk from a quota; not in the message
        raise error from None
    return path


class _WriteErrors:
    """A binary file that remembers the OSError of a failed write: torch.save reports a full
    disk as a RuntimeError about stream positions, zipfile as whatever it hit next."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._raw.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:  # seek, tell, flush, fileno, ... of the real file
        return getattr(self._raw, name)


def sync_files() -> None:
    """Flush every written file and rename to disk (``os.sync``): one call makes all the files
    that :func:`atomic_write` wrote with ``sync=False`` durable."""
    os.sync()


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
    """Delete the ``.NAME.PID.*.tmp`` files that interrupted :func:`atomic_write` calls of ``path``
    left: those of processes no longer alive (a live writer's file is its own; a temporary
    without a process id is from an older reid and always stale)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = []
    for file in sorted(path.parent.glob(f".{path.name}.*.tmp")):
        writer = file.name[len(path.name) + 2:].split(".", 1)[0]
        if writer.isdigit() and process_alive(int(writer)):
            continue
        file.unlink(missing_ok=True)
        stale.append(file)
    return stale


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


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
