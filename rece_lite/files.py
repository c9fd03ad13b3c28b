"""Writing results: a file or a folder appears whole or not at all (temp + rename).

* :func:`save_tensors`: safetensors, never pickles, through a temp file beside the target.
* :func:`staged_dir`: every output folder (the command's runs, the benchmark, the training's
  exports) is filled in a hidden temp folder beside it and renamed into place only when
  everything in it is written; on any failure, a signal included, nothing is left behind.

How a replace survives being killed at any instant (SIGKILL, power loss):

* Temp names are ``.<name>.<pid>-<random>.tmp`` beside the target (``<name>`` shortened to a
  prefix and a hash when long, so that a legal 255-byte name never gives an illegal temp name).
* A new folder goes in with ``renameat2(RENAME_NOREPLACE)``: it never replaces a folder that
  appeared at the target meanwhile (another run, the user).  A forced replace is one
  ``renameat2(RENAME_EXCHANGE)``: the old folder and the new one swap names in one step, so the
  target always holds one of them, whole; the old one, now under the temp name, is then removed.
  Where the system lacks ``renameat2`` (not Linux; some file systems), the old folder is first
  renamed to ``.<name>.<pid>-<random>.old`` and the new one renamed in.
* Every write into a folder first looks for leftovers of *dead* processes (the pid in the name
  no longer runs) for the same target: a ``.old`` folder is put back if the target is missing
  (the kill came between the two renames) and removed otherwise; ``.tmp`` files and folders are
  removed.  Leftovers of live processes are never touched (two runs into one place).

Errors of the file system (a full disk, a read-only folder) become a :class:`WriteError`: one
line naming the target and the cause (the CLI and the training print it without a traceback).

Imports only the standard library at module level, so that ``rece-lite --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import secrets
import shutil
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class UsageError(Exception):
    """Bad input to a command, caught before any work starts: printed as one line, exit status 2."""


class WriteError(UsageError, OSError):
    """The file system refused a write (full disk, read-only, ...): one line naming the target and the cause.

    An :class:`OSError` (``errno`` kept) and a :class:`UsageError`, so that the CLI and the training
    print it as one line, without a traceback.
    """

    def __str__(self) -> str:
        return self.strerror or super().__str__()


#: errno values that are the file system's fault, not a bug: reported as one line
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM,
                errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE, errno.ENOTDIR, errno.EISDIR, errno.ENOENT,
                errno.EEXIST, errno.ENOTEMPTY, errno.EXDEV, errno.EBUSY}  # fmt: skip
# safetensors (Rust) reports I/O errors as text: "... Os { code: 28, kind: StorageFull, ... }"
_RUST_OS_CODE = re.compile(r"Os \{ code: (\d+)|\(os error (\d+)\)")


def write_errno(e: BaseException | None) -> int | None:
    """The errno of a file-system failure behind ``e`` (its chain of causes included), or None."""
    seen = 0
    while e is not None and seen < 8:
        code = getattr(e, "errno", None)
        if isinstance(code, int) and code in WRITE_ERRNOS:
            return code
        m = _RUST_OS_CODE.search(str(e))
        if m and int(m.group(1) or m.group(2)) in WRITE_ERRNOS:
            return int(m.group(1) or m.group(2))
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def write_error(path: str | os.PathLike, e: BaseException, what: str = "") -> WriteError | None:
    """``e`` as a one-line :class:`WriteError` naming ``path`` and the cause, if it is the file system's; else None."""
    if isinstance(e, WriteError):
        return e
    code = write_errno(e)
    if code is None:
        return None
    label = f"{what} {path}" if what else str(path)
    return WriteError(code, f"cannot write {label}: {os.strerror(code)}")


def _folder_error(path: Path, e: OSError, what: str) -> UsageError:
    reason = e.strerror or str(e)
    err = WriteError(e.errno or errno.EIO, f"cannot write {what} {path}: {reason}")
    return err


# ------------------------------------------------------------------------- temp names
_NAME_MAX = 255
_LEFTOVER = re.compile(r"^(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})\.(?P<kind>tmp|old)$")


def _base(name: str) -> str:
    """``name``, or a prefix of it and a hash when a temp name made from it could pass 255 bytes."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= 120:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return raw[:60].decode("utf-8", "ignore") + "~" + digest


def temp_name(target: Path, kind: str = "tmp") -> Path:
    """A fresh hidden name beside ``target``: ``.<name>.<pid>-<random>.<kind>`` (at most ~150 bytes)."""
    return target.parent / f".{_base(target.name)}.{os.getpid()}-{secrets.token_hex(4)}.{kind}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or a pid we cannot ask about): leave it alone
    return True


def _remove(path: Path) -> None:
    """Remove a file or a folder (no error if it is gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            path.unlink()


def recover(target: str | os.PathLike) -> None:
    """Recover or remove what killed processes left beside ``target`` (see the module's docstring).

    A ``.old`` folder of a dead process is put back at ``target`` when ``target`` is missing
    (the kill came between the two renames of a replace), else removed; ``.tmp`` files and
    folders of dead processes are removed.  Leftovers of live processes are left alone.
    Also the older format, ``.<name>.old.<random>/old`` (put back when ``target`` is missing)
    and ``.<name>.<random>.tmp`` more than an hour old.
    """
    target = Path(os.path.abspath(target))
    parent = target.parent
    if not parent.is_dir():
        return
    prefix = f".{_base(target.name)}."
    old_prefix = f".{target.name}."
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for n in sorted(names):
        p = parent / n
        with contextlib.suppress(OSError):
            if n.startswith(prefix) and (m := _LEFTOVER.match(n[len(prefix):])):
                if _alive(int(m["pid"])):
                    continue
                if m["kind"] == "old" and not os.path.lexists(target):
                    os.rename(p, target)
                else:
                    _remove(p)
            elif n.startswith(old_prefix) and re.fullmatch(r"old\.[\w]{8}", n[len(old_prefix):]):
                # a folder moved aside by an older rece-lite, killed before the new one went in
                if (p / "old").exists() and not os.path.lexists(target):
                    os.rename(p / "old", target)
                    p.rmdir()
                elif time.time() - p.stat().st_mtime > 3600:
                    _remove(p)
            elif n.startswith(old_prefix) and re.fullmatch(r"[\w]{8}\.tmp", n[len(old_prefix):]):
                if time.time() - p.lstat().st_mtime > 3600:
                    _remove(p)


# -------------------------------------------------------------------------- renames
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the system or the file system has no such call."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def _appeared(out: Path, option: str) -> UsageError:
    return UsageError(
        f"{option} {out} appeared while this run was working (another run, or made meanwhile): it was left as it "
        "is and this run's result was not kept; pass --force to replace it, or give another folder"
    )


def _replace_dir(tmp: Path, out: Path, *, force: bool = True, option: str = "--out") -> None:
    """Put the finished folder ``tmp`` at ``out``: one atomic step where the system allows.

    Without ``force`` a folder (or file) at ``out`` is never replaced, even one that appeared
    after the run's start: a :class:`UsageError`, ``tmp`` left for the caller to remove.  With
    ``force`` the old ``out`` and ``tmp`` swap names at once; the old one is then removed.
    """
    if not force or not os.path.lexists(out):
        try:
            if _renameat2(tmp, out, _RENAME_NOREPLACE):
                return
        except FileExistsError:
            raise _appeared(out, option) from None
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise _appeared(out, option) from None
            raise
        # no renameat2: os.rename replaces only an empty folder; check just before
        if os.path.lexists(out):
            if not force:
                raise _appeared(out, option)
        else:
            try:
                os.rename(tmp, out)
                return
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                if not force:
                    raise _appeared(out, option) from None
    # forced: swap, then remove the old one (now under tmp's name)
    if _renameat2(tmp, out, _RENAME_EXCHANGE):
        _remove(tmp)
        return
    old = temp_name(out, "old")
    os.rename(out, old)  # killed here: the next run puts `old` back (see recover)
    os.rename(tmp, out)
    _remove(old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------- files
def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """safetensors, never pickles; written to a temp file renamed into place.

    Raises:
        WriteError: (an ``OSError``) naming ``path`` (not the temp file) and the cause when its
            folder is missing or read-only or the disk is full; no temp file is left behind.
    """
    from safetensors.torch import save

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: its folder {path.parent} does not exist")
    recover(path)
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise WriteError(e.errno or errno.EIO, f"cannot write {path}: {e.strerror}") from None
    try:
        with _cleanup_on_sigterm():
            try:
                # serialised here and written through our own temp file: safetensors' save_file writes through
                # a temp file of its own (".tmpXXXXXX") that a killed process leaves where no recovery knows it
                data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
                with os.fdopen(fd, "wb") as f:
                    fd = -1
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                del data
                os.chmod(tmp, 0o666 & ~_umask())
                os.replace(tmp, path)
            except Exception as e:
                err = write_error(path, e)
                if err is None:
                    raise
                raise err from e
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_regular_file(path: str | os.PathLike, what: str = "") -> Path:
    """``path`` if it is a regular file (symlinks followed); else a clear error, before anything opens it.

    A FIFO, a socket or a device would block a reader or feed it endless bytes.
    """
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{label} does not exist") from None
    except OSError as e:
        raise OSError(e.errno, f"cannot read {label}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{label} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{label} is not a regular file (a FIFO, socket or device): give a file")
    return path


# -------------------------------------------------------------------------- folders
def check_out(out: str | os.PathLike, *, force: bool = False, option: str = "--out") -> Path:
    """``out`` as an absolute, normalised path, if a folder can be written there; else a :class:`UsageError`.

    Refuses, before any work starts: an existing ``out`` without ``force``; a file in the
    way (``out`` itself, or a parent that is a file); the current folder or one of its
    parents (replacing it would delete the user's own files); a parent that cannot be written;
    a name longer than the file system allows.
    """
    raw = str(out)
    if not raw.strip():
        raise UsageError(f"{option} is empty: give a folder to write to")
    path = Path(os.path.abspath(raw))  # collapses "new/../x" without creating "new"
    cwd = Path.cwd().resolve()
    if path.resolve() == cwd or path.resolve() in cwd.parents:
        raise UsageError(f"{option} {raw} is the current folder or one of its parents: give a new folder's name")
    if any(len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX for part in path.parts):
        raise UsageError(f"{option} {raw}: a name in it is longer than {_NAME_MAX} bytes")
    recover(path)  # a killed run's leftovers: put back / removed before looking at `out`
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {raw} is a file, not a folder: give a folder's name")
    if path.exists() and not force:
        raise UsageError(f"{option} {raw} already exists; pass --force to replace it")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {raw} lies inside {parent}, which is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {raw}: the folder {parent} is not writable")
    return path


@contextlib.contextmanager
def _cleanup_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into SystemExit inside the block (main thread only), so ``finally`` clauses run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, *, force: bool = False, option: str = "--out") -> Iterator[Path]:
    """A folder to fill that replaces ``out`` only when the block succeeds.

        with staged_dir("runs/red", force=args.force) as tmp:
            patch.save(tmp / "patch.safetensors")
            ...                       # "runs/red" appears (or is replaced) here, whole

    The temp folder is hidden, beside ``out`` (same file system, so the final rename is
    atomic), with the permissions of a normal folder.  On an exception, Ctrl-C, SIGTERM or
    SIGHUP it is removed, and so are parent folders created for it; ``out`` is left as it was.
    Killed outright (SIGKILL), the next write to ``out`` cleans up (see the module's docstring).
    Without ``force``, a folder that appears at ``out`` during the block is not replaced either.
    A file-system error inside the block (full disk, ...) becomes a one-line :class:`WriteError`.

    Args:
        out: the folder to create or replace.
        force: replace an existing ``out`` (otherwise a :class:`UsageError`, checked first and
            again at the end).
        option: the option's name, for messages.
    """
    path = check_out(out, force=force, option=option)
    created: list[Path] = []
    parent = path.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp: Path | None = None
    try:
        with _cleanup_on_sigterm():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = temp_name(path)
                os.mkdir(tmp, 0o700)
                os.chmod(tmp, 0o777 & ~_umask())
            except OSError as e:
                tmp = None
                raise _folder_error(path, e, "the folder") from None
            try:
                yield tmp
                _replace_dir(tmp, path, force=force, option=option)
            except UsageError:
                raise
            except Exception as e:
                err = write_error(path, e, option if option.startswith("-") else "the folder")
                if err is None:
                    raise
                raise err from e
            tmp = None
    finally:
        if tmp is not None:
            _remove(tmp)
            for p in created:  # innermost first; only if still empty
                with contextlib.suppress(OSError):
                    p.rmdir()
