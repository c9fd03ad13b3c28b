"""Where the embedded models and the evaluator's weights live.

In a checkout they are in the repository's ``data/`` folder; an installed wheel carries
the same files inside the package, as ``rece_lite/data/`` (``pyproject.toml`` maps one onto
the other).  The miniature models go by name (:data:`EMBEDDED`):

* ``"tiny"``: the default, today the model trained on the denoising loss alone;
* ``"tiny-ungrounded"``: that same model, by a name that says how it was trained;
* ``"tiny-grounded"``: it fine-tuned with a grounding loss that pushes each colour and
  shape word's cross-attention map into its object's mask (``data/tiny-grounded``).

``RECE_LITE_TINY`` points ``"tiny"`` at another checkpoint (e.g. one still training).
Standard library only: the command imports this before torch.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent

#: Each embedded model's name -> its folder under :func:`data_dir`.
EMBEDDED: dict[str, str] = {"tiny": "tiny", "tiny-ungrounded": "tiny", "tiny-grounded": "tiny-grounded"}


def data_dir() -> Path:
    """The folder holding ``tiny/`` and ``shape_classifier.safetensors``."""
    installed = _PACKAGE / "data"
    return installed if installed.is_dir() else _PACKAGE.parent / "data"


def is_embedded(model) -> bool:
    """Whether ``model`` names one of the miniature models (rather than a folder or a hub id)."""
    return isinstance(model, str) and model in EMBEDDED


def model_path(name: str) -> Path:
    """The folder (``save_pretrained`` layout) of the embedded model called ``name``.

    ``"tiny"`` honours ``$RECE_LITE_TINY``; the other names do not.
    """
    if name not in EMBEDDED:
        raise ValueError(f"no embedded model is called {name!r}; the names are {', '.join(EMBEDDED)}")
    if name == "tiny" and os.environ.get("RECE_LITE_TINY"):
        return Path(os.environ["RECE_LITE_TINY"])
    return data_dir() / EMBEDDED[name]


def tiny_path() -> Path:
    """The default miniature model's folder (``save_pretrained`` layout), or ``$RECE_LITE_TINY``."""
    return model_path("tiny")


def classifier_path() -> Path:
    """The evaluator's shape CNN (safetensors)."""
    return data_dir() / "shape_classifier.safetensors"
