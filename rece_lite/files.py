"""Writing results: a file or a folder appears whole or not at all (temp + rename).

* :func:`save_tensors`: safetensors, never pickles, through a temp file beside the target.
* :func:`staged_dir`: every output folder (the command's runs, the benchmark, the training's
  exports) is filled in a hidden temp folder beside it and renamed into place only when
  everything in it is written; on any failure, a signal included, nothing is left behind.

Imports only the standard library at module level, so that ``rece-lite --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class UsageError(Exception):
    """Bad input to a command, caught before any work starts: printed as one line, exit status 2."""


def _folder_error(path: Path, e: OSError, what: str) -> UsageError:
    reason = e.strerror or str(e)
    return UsageError(f"cannot write {what} {path}: {reason}")


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """safetensors, never pickles; written to a temp file renamed into place.

    Raises:
        OSError: naming ``path`` (not the temp file) when its folder is missing or read-only;
            no temp file is left behind.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: its folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_out(out: str | os.PathLike, *, force: bool = False, option: str = "--out") -> Path:
    """``out`` as an absolute, normalised path, if a folder can be written there; else a :class:`UsageError`.

    Refuses, before any work starts: an existing ``out`` without ``force``; a file in the
    way (``out`` itself, or a parent that is a file); the current folder or one of its
    parents (replacing it would delete the user's own files); a parent that cannot be written.
    """
    raw = str(out)
    if not raw.strip():
        raise UsageError(f"{option} is empty: give a folder to write to")
    path = Path(os.path.abspath(raw))  # collapses "new/../x" without creating "new"
    cwd = Path.cwd().resolve()
    if path.resolve() == cwd or path.resolve() in cwd.parents:
        raise UsageError(f"{option} {raw} is the current folder or one of its parents: give a new folder's name")
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
    """Turn SIGTERM into SystemExit inside the block (main thread only), so ``finally`` clauses run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, *, force: bool = False, option: str = "--out") -> Iterator[Path]:
    """A folder to fill that replaces ``out`` only when the block succeeds.

        with staged_dir("runs/red", force=args.force) as tmp:
            patch.save(tmp / "patch.safetensors")
            ...                       # "runs/red" appears (or is replaced) here, whole

    The temp folder is hidden, beside ``out`` (same file system, so the final rename is
    atomic), with the permissions of a normal folder.  On an exception, Ctrl-C or SIGTERM it
    is removed, and so are parent folders created for it; ``out`` is left as it was.

    Args:
        out: the folder to create or replace.
        force: replace an existing ``out`` (otherwise a :class:`UsageError`, checked first).
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
                tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
                os.chmod(tmp, 0o777 & ~_umask())
            except OSError as e:
                raise _folder_error(path, e, "the folder") from None
            yield tmp
            _replace_dir(tmp, path)
            tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            for p in created:  # innermost first; only if still empty
                with contextlib.suppress(OSError):
                    p.rmdir()


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``, replacing what was there."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "old")
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
