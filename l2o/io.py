"""The one atomic writer: every file the project writes goes through ``atomic_write``.

A write goes to a temporary file in the destination's folder (same file system), is flushed and
fsynced, then renamed over the destination with ``os.replace`` (atomic on POSIX) and the folder is
fsynced. A crash or a full disk at any moment leaves either the old file or the new one, never a
torn one; the temporary is removed when the write fails. The file gets the mode a plain
``open(path, "w")`` would leave: an existing file's own, else ``0o666`` less the umask (the
temporary is created ``0o600``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

#: Temporaries are named ``.<name>.<random>.tmp``; ``stale_temporaries`` finds them by this glob.
TEMPORARY_GLOB = ".*.tmp"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems refuse to open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read from ``/proc`` where Linux reports it (``os.umask`` reads it
    only by setting it, which would race the other threads' file creation)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode(path: Path) -> int:
    """The permission bits ``open(path, "w")`` leaves: those of the file it replaces, else
    ``0o666`` less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary beside ``path``; on a clean exit it replaces ``path`` atomically."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode(path))
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created, with its folder) for the block,
    waiting for any other holder. The kernel releases it when its holder dies, so a killed
    process never leaves a lock behind."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write(
    path: str | os.PathLike, data: bytes | str | Callable[[IO], None], *, text: bool | None = None
) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    ``data`` is bytes, a string (written as UTF-8 text), or a callable that writes into the open
    file (``lambda fh: torch.save(obj, fh)``); ``text=True`` opens the file in text mode for a
    callable (``csv.writer``, ``json.dump``).
    """
    if isinstance(data, bytes | bytearray):
        mode, write = "wb", (lambda fh: fh.write(data))
    elif isinstance(data, str):
        mode, write = "w", (lambda fh: fh.write(data))
    elif callable(data):
        mode, write = ("w" if text else "wb"), data
    else:
        raise TypeError(f"atomic_write takes bytes, str or a callable, not {type(data).__name__}")
    kwargs = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
    with atomic_open(path, mode, **kwargs) as fh:
        write(fh)
    return Path(path)


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporaries left in ``folder`` by a writer that was killed mid-write (never read)."""
    return sorted(Path(folder).glob(TEMPORARY_GLOB))


#: How every file ``torch.save`` writes begins: a zip archive, or (the legacy format) a pickle.
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")


def not_a_torch_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file, or None if it may be one. Torch's unpickler
    meets a text file (a ``config.yaml`` given as a checkpoint) with a bare ``IndexError`` or
    ``KeyError``; its first bytes tell at once."""
    with open(path, "rb") as fh:
        head = fh.read(48)
    if not head:
        return "it is empty (0 bytes): truncated or corrupt"
    if head.startswith(TORCH_FILE_STARTS):
        return None
    text = head.decode("utf-8", "ignore")
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"it is a text file (it begins {text[:24]!r}), not one written by torch.save"
    return f"it begins with the bytes {head[:8]!r}, which no file written by torch.save does"
