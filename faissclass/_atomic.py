"""Atomic replacement of a directory that faissclass saved (an index, a classifier).

A save writes everything into a hidden temporary directory next to the target,
fsyncs it, and swaps it into place: on Linux with ``renameat2(RENAME_EXCHANGE)``
(one atomic step: interrupted at any moment, the old or the new directory is
at the path, complete); elsewhere by two renames, with the old copy kept under
a hidden name until the new one is in place. The target is replaced only if it
is missing, empty, or a directory of the same kind that holds nothing but the
files such a save writes; anything else is refused and left untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import secrets
import shutil
import socket
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

__all__ = ["atomic_save_dir", "check_target"]

_TMP_TAG = ".faissclass-tmp-"
_OLD_TAG = ".faissclass-old-"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(path)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _is_own(entry: Path, own: Collection[str]) -> bool:
    return entry.name in own


def check_target(path: Path, *, marker: str, kind: str, own: Collection[str],
                 overwrite: bool, format_name: str) -> bool:
    """Whether ``path`` exists and will be replaced; raises if it must not be.

    Parameters
    ----------
    marker : str
        The sidecar file a save of this kind writes (``index.json``, ...).
    kind : str
        What is saved, for messages ("index", "classifier").
    own : collection of str
        Names a save of this kind writes; a target holding anything else is refused.
    format_name : str
        The ``format`` value in the marker JSON.
    """
    if not os.path.lexists(path):
        return False
    if path.is_symlink():
        raise FileExistsError(f"{path} is a symlink; refusing to replace it with a saved "
                              f"{kind}. Save to a plain path.")
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; refusing to replace it "
                              f"with a saved {kind}. Pick another path.")
    entries = list(path.iterdir())
    if not entries:
        return True
    sidecar = path / marker
    is_saved = False
    if sidecar.is_file():
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(sidecar.read_text())
            is_saved = isinstance(doc, dict) and doc.get("format") == format_name
    if not is_saved:
        names = sorted(e.name for e in entries)[:3]
        raise FileExistsError(
            f"{path} holds files that are not a saved faissclass {kind} ({', '.join(names)}"
            f"{', ...' if len(entries) > 3 else ''}); refusing to replace it. Pick another path.")
    foreign = sorted(e.name for e in entries if not _is_own(e, own))
    if foreign:
        raise FileExistsError(
            f"{path} is a saved {kind} but also holds other files ({', '.join(foreign[:3])}); "
            "refusing to replace it and lose them. Move them away or pick another path.")
    if not overwrite:
        raise FileExistsError(f"{path} already holds a saved {kind}; pass overwrite=True to "
                              "replace it (or pick another path)")
    return True


def _remove_quietly(p: Path) -> None:
    """Delete the previous contents after a successful swap; a failure here does not
    undo the save (the old copy stays under its hidden name, and the log says so)."""
    try:
        shutil.rmtree(p)
    except OSError as exc:
        logging.getLogger(__name__).warning("could not remove %s (%s); delete it by hand", p,
                                            exc)


def _host() -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in socket.gethostname())[:40] or "host"


def _clean_stale(parent: Path, name: str) -> None:
    """Remove temporary directories of this target left by saves on this host whose
    process is gone (on shared storage, other hosts' saves are never touched)."""
    prefix = f".{name}{_TMP_TAG}{_host()}-"
    for p in parent.glob(f"{prefix}*"):
        pid_text = p.name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or not p.is_dir() or p.is_symlink():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def atomic_save_dir(path: str | os.PathLike[str], write: Callable[[Path], Any], *,
                    marker: str, kind: str, own: Collection[str], overwrite: bool,
                    format_name: str, fsync: bool = True) -> Path:
    """Run ``write(tmpdir)`` and put the result at ``path`` atomically (see the module doc).

    Raises
    ------
    FileExistsError
        ``path`` holds something a save must not replace (a file, a foreign
        directory, a saved {kind} without ``overwrite=True``).
    """
    path = Path(path)
    replace = check_target(path, marker=marker, kind=kind, own=own, overwrite=overwrite,
                           format_name=format_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(path.parent, path.name)
    tmp = path.parent / f".{path.name}{_TMP_TAG}{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        write(tmp)
        if fsync:
            _fsync_tree(tmp)
        if not replace:
            try:
                os.rename(tmp, path)  # fails if something non-empty appeared meanwhile
            except OSError as exc:
                raise FileExistsError(f"{path} appeared while saving; nothing was replaced "
                                      f"({exc.strerror})") from None
        elif _exchange(tmp, path):
            # ``tmp`` now holds what was at ``path``: check again that it is ours (the
            # target was checked before the write, which may have taken minutes).
            try:
                check_target(tmp, marker=marker, kind=kind, own=own, overwrite=True,
                             format_name=format_name)
            except FileExistsError:
                _exchange(tmp, path)  # someone put their files there meanwhile: give back
                raise FileExistsError(f"{path} changed while the {kind} was being saved and "
                                      f"no longer holds a saved {kind}; nothing was "
                                      "replaced") from None
            _remove_quietly(tmp)
        else:  # no atomic exchange here: two renames, the old copy kept until the new is in
            old = path.parent / f".{path.name}{_OLD_TAG}{_host()}-{os.getpid()}-" \
                f"{secrets.token_hex(4)}"
            os.rename(path, old)
            os.rename(tmp, path)
            _remove_quietly(old)
        if fsync:
            _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
