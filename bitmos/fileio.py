"""Atomic file and folder writing (a crash or an error never leaves a half-written output behind), safe
names for paths built from file contents, and text reading with one-line errors."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from bitmos.errors import BitmosUserError, FormatError


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename.

    An existing ``path`` that is not a regular file (a device such as ``/dev/null``, a FIFO, a folder) is
    refused: the rename would replace it, and as root that replaces ``/dev/null`` for every process.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise FormatError(f"output {str(path)!r} {why_not_a_file(path)}; give a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file owner-only; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def replace_marked_block(path: str | os.PathLike, name: str, block: str) -> None:
    """Put ``block`` between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in a text file (a doc
    table a benchmark regenerates), appending the markers if the file has none; written atomically."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    p = Path(path)
    text = p.read_text("utf-8") if p.exists() else ""
    marked = f"{begin}\n{block}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: marked, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + marked + "\n"
    write_text_atomic(p, text)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- names read from files ----------------------------------------------------------------------------

#: A name that may become a file name: letters, digits, '.', '_', '-', starting with a letter, digit or '_'
#: (so never '.', '..', a hidden file or an option-like '-x'), no separators, at most 200 characters.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


def check_safe_name(name: object, what: str) -> str:
    """``name`` if it is safe to use as one file name inside an output folder, else a FormatError.

    Every name read from a file (layer names in an export, file entries in a manifest) passes through here
    before it becomes part of a path, so no input can make bitmos write or read outside its folder.
    """
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise FormatError(f"{what} {name!r} is not a safe file name (allowed: letters, digits, '.', '_', '-', "
                          "starting with a letter, digit or '_', no '..', at most 200 characters)")
    return name


# ---- reading text the user names ------------------------------------------------------------------------

def why_not_a_file(path: str | os.PathLike) -> str:
    """Why ``path`` (for which ``is_file()`` is false) cannot be read as a file, to end an error message."""
    p = Path(path)
    if p.is_dir():
        return "is a folder, not a file"
    if p.exists():
        return "is not a regular file (a device, FIFO or socket)"
    return "does not exist"


#: Largest text file bitmos reads (a listing of a full 2^20-word instruction memory is about 40 MiB).
MAX_TEXT_BYTES = 256 << 20


def read_text_file(path: str | os.PathLike, what: str, *, error: type[BitmosUserError] = FormatError,
                   max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``path``; a missing file, a folder, a binary file or one larger than ``max_bytes``
    (``/dev/zero``, ``/dev/urandom``: endless) is a one-line user error. Pipes (``<(...)``) are read."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise error(f"{what} {str(p)!r} is larger than {max_bytes >> 20} MiB; not a text file bitmos reads")
    except FileNotFoundError:
        raise error(f"{what} {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {str(p)!r} is a folder, not a file") from None
    except OSError as exc:
        raise error(f"cannot read {what} {str(p)!r}: {exc.strerror or exc}") from None
    if b"\x00" in data:
        raise error(f"{what} {str(p)!r} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {str(p)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


# ---- whole output folders -------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, marker: str, keep_existing: bool = False) -> Iterator[Path]:
    """Build an output folder whole, or not at all.

    Yields a fresh temporary sibling of ``path`` to write into; when the block finishes, the sibling replaces
    ``path`` by rename (an atomic exchange on Linux), so a reader sees the old folder or the new one, never a
    mixture. If the block raises, the sibling is removed and ``path`` is left exactly as it was.

    ``marker`` is the file every folder of this kind holds (``manifest.json``, ``report.json``, ...; a glob
    pattern such as ``bitmos_accel_*.json`` matches any of several): an existing ``path`` is replaced only if
    it is empty or holds the marker, so pointing ``-o`` at a folder of other files is refused instead of
    deleting them.

    ``keep_existing``: the sibling starts as a copy of the existing folder, so the block adds or replaces
    files and everything else in the folder is kept (``bitmos rtl emit`` of a second config into one folder);
    the whole folder still changes in one rename.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir() or path.is_symlink():
            raise FormatError(f"output {str(path)!r} exists and is not a folder")
        if not any(p.is_file() for p in path.glob(marker)) and any(path.iterdir()):
            raise FormatError(f"output folder {str(path)!r} is not empty and holds no {marker}, so it is not an "
                              "earlier output of this command; choose a new folder or empty it")
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)   # mkdtemp makes it owner-only; give it a plain mkdir's permissions
        if keep_existing and path.is_dir():
            _copy_entries(path, tmp)
        yield tmp
        _fsync_tree(tmp)
        if path.is_dir():
            if not _exchange(tmp, path):
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
                os.replace(path, old / path.name)
                os.replace(tmp, path)
                tmp = old
        else:
            os.replace(tmp, path)
            tmp = None
        _fsync_dir(parent)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _copy_entries(src: Path, dst: Path) -> None:
    """Copy every entry of folder ``src`` into the existing folder ``dst`` (symlinks as symlinks)."""
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True)
        else:
            shutil.copy2(entry, target)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):   # old kernel or a filesystem without exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:   # some filesystems cannot fsync a folder; the data files are synced already
        pass
    finally:
        os.close(fd)
