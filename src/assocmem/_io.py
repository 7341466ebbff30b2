"""Files at the bottom of the package: atomic writes (temporary file, fsync, rename, fsync the
directory), SHA-256 checksums, advisory file locks and the creation modes a plain ``open()`` gives.

No equations here. Banks, streaming banks, the kernels' caches and reports all write through this
module, so a crash at any moment leaves the old file or the new one, never a mixture.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable

__all__ = [
    "TMP_PREFIX",
    "atomic_replace",
    "atomic_write_bytes",
    "atomic_directory",
    "create_mode",
    "file_lock",
    "fsync_dir",
    "fsync_file",
    "remove_stale_temporaries",
    "sha256_file",
    "require_regular_file",
]

TMP_PREFIX = ".tmp-"
_umask_lock = threading.Lock()


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status);
    elsewhere it is set and restored at once under a lock."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def create_mode(directory: bool = False) -> int:
    """The mode ``open()`` (``0o666 & ~umask``) or ``mkdir()`` (``0o777 & ~umask``) would give."""
    return (0o777 if directory else 0o666) & ~_current_umask()


def fsync_dir(path) -> None:
    """Flush a directory entry (after a rename) to disk; a no-op where directories have no handle."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_file(path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def tmp_prefix(name: str) -> str:
    """Prefix of this process's temporaries for ``name`` (carries the pid, so that the next writer
    can tell a killed writer's leftovers from a live writer's)."""
    return f"{TMP_PREFIX}{name}.{os.getpid()}."


def remove_stale_temporaries(parent: Path, name: str) -> None:
    """Delete temporary files/directories left beside ``parent/name`` by writers that were killed
    (their names carry the writer's pid; only those of dead processes are touched)."""
    head = f"{TMP_PREFIX}{name}."
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return
    for p in entries:
        if not p.name.startswith(head):
            continue
        pid = p.name[len(head):].split(".", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            if p.is_dir():
                for q in p.iterdir():
                    q.unlink()
                p.rmdir()
            else:
                p.unlink()
        except OSError:
            pass


def atomic_replace(path, write: Callable[[Path], None]) -> None:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary file in the same directory, which
    is fsynced and renamed over ``path`` (then the directory is fsynced). A crash at any moment
    leaves the old file or the new one, never a mixture; the temporary file is removed on error,
    and temporaries of killed writers are removed by the next write. The new file gets the mode a
    plain ``open()`` would give (``0o666 & ~umask``)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    remove_stale_temporaries(parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path.name), dir=str(parent))
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, create_mode())  # after write(): a writer may have re-created the file
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(parent)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_replace`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_replace(path, write)


def atomic_directory(path, fill: Callable[[Path], None]) -> None:
    """Create the directory ``path`` atomically: ``fill(tmp)`` populates a hidden temporary
    directory beside it, which is fsynced and renamed into place (``path`` must not exist). The
    directory gets the mode ``mkdir()`` would give (``0o777 & ~umask``)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    remove_stale_temporaries(parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(path.name), dir=str(parent)))
    try:
        os.chmod(tmp, create_mode(directory=True))
        fill(tmp)
        fsync_dir(tmp)
        os.rename(tmp, path)
    except BaseException:
        for p in tmp.iterdir() if tmp.exists() else ():
            try:
                p.unlink()
            except OSError:
                pass
        try:
            tmp.rmdir()
        except OSError:
            pass
        raise
    fsync_dir(parent)


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def require_regular_file(path, what: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``path`` unless it is a regular file (a FIFO, socket or device would
    block or misbehave when opened; a directory is not a file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"{path}: {what} cannot be examined ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device)"
        raise error(f"{path}: {what} is {kind}; expected a regular file")


class file_lock:
    """An advisory exclusive lock (POSIX ``flock``) on ``path`` held for the ``with`` block.

    Every writer of one bank takes the same lock file, so appends and re-saves from several
    processes are serialised. On platforms without ``fcntl`` it does nothing."""

    def __init__(self, path):
        self.path = Path(path)
        self.fd: int | None = None

    def __enter__(self) -> "file_lock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locking
            return self
        self.fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, create_mode())
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> bool:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None
        return False
