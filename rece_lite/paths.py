"""Where the embedded model and the evaluator's weights live.

In a checkout they are in the repository's ``data/`` folder; an installed wheel carries
the same files inside the package, as ``rece_lite/data/`` (``pyproject.toml`` maps one onto
the other).  ``RECE_LITE_TINY`` points ``"tiny"`` at another checkpoint (e.g. one still
training).  Standard library only: the command imports this before torch.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir() -> Path:
    """The folder holding ``tiny/`` and ``shape_classifier.safetensors``."""
    installed = _PACKAGE / "data"
    return installed if installed.is_dir() else _PACKAGE.parent / "data"


def tiny_path() -> Path:
    """The embedded miniature model's folder (``save_pretrained`` layout), or ``$RECE_LITE_TINY``."""
    return Path(os.environ.get("RECE_LITE_TINY") or data_dir() / "tiny")


def classifier_path() -> Path:
    """The evaluator's shape CNN (safetensors)."""
    return data_dir() / "shape_classifier.safetensors"
