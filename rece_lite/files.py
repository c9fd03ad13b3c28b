"""Atomic writes: a file or a directory appears whole or not at all (temp + rename)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """safetensors, never pickles; written to a temp file renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def new_dir_for(out: Path) -> Path:
    """An empty temporary directory beside ``out`` (same filesystem, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished directory ``tmp`` at ``out``, replacing what was there."""
    if out.exists():
        old = new_dir_for(out)
        os.replace(out, old / "old")
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
