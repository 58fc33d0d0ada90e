"""Writing files so that no reader ever sees half of one and nothing is replaced unless asked: a temporary
file in the target folder, fsynced, then renamed over the target or hard-linked to a name that must be
new. :func:`write_numbered` gives a file the next free ``<prefix>_NNNNN`` name the same way."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Callable

from .errors import LineasError, SteeringFileError

__all__ = ["atomic_write_bytes", "write_numbered"]

_MAX_NUMBERED_TRIES = 1000  # names taken by other writers while this one writes, before giving up


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``: a reader sees the
    old file or the new one, never half of one, and an interrupted write leaves nothing behind.

    Only a regular file is ever replaced (a device node, a folder, a FIFO or a symlink at ``path`` is
    refused). With ``overwrite=False`` an existing ``path`` is never replaced, also when another writer
    creates it while this one writes (the final step is an exclusive hard link): :class:`FileExistsError`."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SteeringFileError(f"cannot write {path}: folder {path.parent} does not exist")
    _check_replaceable(path, overwrite)
    tmp = _write_temp(path, data)
    try:
        if overwrite:
            _check_replaceable(path, overwrite)
            os.replace(tmp, path)
        else:
            _link_exclusive(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return path


def write_numbered(folder: str | os.PathLike, prefix: str, data: bytes | Callable[[str], bytes],
                   ext: str = ".safetensors") -> Path:
    """Write ``data`` to ``folder/<prefix>_NNNNN<ext>`` under the lowest number (from 1) no file in
    ``folder`` has, atomically, and return the path. An existing file is never replaced, also when another
    writer takes the same number meanwhile: the finished temporary file is published with an exclusive
    hard link (an exclusive create where the file system has no hard links), and a taken number moves on
    to the next. ``data`` may be a function of the file's stem (``<prefix>_NNNNN``), for contents that
    name their own file. The folder is created if missing; a ``prefix`` that would leave it is refused."""
    folder = Path(folder)
    first = f"{prefix}_{1:05d}{ext}"
    if Path(first).name != first or (folder / first).resolve().parent != folder.resolve():
        raise LineasError(f"file name prefix {prefix!r} would leave the folder {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    taken = _names_in(folder)
    counter, tmp, written = 0, None, None
    try:
        for _ in range(_MAX_NUMBERED_TRIES):
            counter += 1
            while f"{prefix}_{counter:05d}{ext}" in taken:
                counter += 1
            path = folder / f"{prefix}_{counter:05d}{ext}"
            content = data(path.stem) if callable(data) else data
            if tmp is None or content is not written:
                if tmp is not None:
                    os.unlink(tmp)
                    tmp = None
                tmp, written = _write_temp(path, content), content
            try:
                _link_exclusive(tmp, path)
                return path
            except FileExistsError:  # another writer took this number meanwhile
                taken.add(path.name)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    raise LineasError(f"could not find a free file name for {prefix!r} in {folder}; choose another name")


def _names_in(folder: Path) -> set[str]:
    """The names in ``folder`` now (other writers may add more at any time)."""
    return {p.name for p in folder.iterdir()}


def _create_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist) holding ``data``, fsynced; removed again if writing fails."""
    # mode 0o666 through os.open: the kernel applies the umask (never read or changed: it is process-global)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _write_temp(path: Path, data: bytes) -> Path:
    """A new hidden file next to ``path`` holding ``data`` (see :func:`_create_exclusive`)."""
    tmp = path.parent / f".{path.name[:100]}.{secrets.token_hex(6)}.tmp"
    _create_exclusive(tmp, data)
    return tmp


def _check_replaceable(path: Path, overwrite: bool) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SteeringFileError(f"{path} is a symbolic link; refusing to replace it: give the real path")
    if not stat.S_ISREG(st.st_mode):
        raise SteeringFileError(f"{path} exists and is not a regular file (a folder or a device); "
                                "refusing to replace it: choose another name")
    if not overwrite:
        raise FileExistsError(errno.EEXIST, "file exists; refusing to overwrite it", str(path))


def _link_exclusive(tmp: Path, path: Path) -> None:
    """Publish ``tmp`` as ``path`` only if ``path`` does not exist (atomic, no check-then-write race)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "file exists; refusing to overwrite it", str(path)) from None
    except OSError as e:  # a file system without hard links: exclusive create, then copy the bytes in
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        _create_exclusive(path, tmp.read_bytes())
