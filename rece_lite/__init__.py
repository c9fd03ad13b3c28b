"""rece-lite: closed-form concept erasure (UCE, RECE) for Stable Diffusion, for teaching.

    import rece_lite as rl
    pipe = rl.load_pipeline("tiny")
    snap = rl.snapshot(pipe)
    patch = rl.uce_erase(pipe, erase=["red"], guide="", preserve=["blue"])
    c_adv = rl.derive_embedding(pipe, "red", original=snap)
    snap.apply(pipe)                      # undo
    res = rl.rece_erase(pipe, "red", epochs=3)
    images = rl.sample(pipe, ["a red circle"], seeds=range(4))

The names below are imported on first use (PEP 562), so that ``rece-lite --help`` and
``import rece_lite`` do not pay for torch and diffusers until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rece_lite._version import __version__

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "AttentionStore": "rece_lite.attention",
    "Recording": "rece_lite.attention",
    "attention_mass_on": "rece_lite.attention",
    "mass_per_area": "rece_lite.attention",
    "mass_ratio": "rece_lite.attention",
    "generate_with_attention": "rece_lite.attention",
    "record_attention": "rece_lite.attention",
    "SolveError": "rece_lite.closed_form",
    "InputError": "rece_lite.errors",
    "LoraExport": "rece_lite.export",
    "read_lora_info": "rece_lite.export",
    "save_pretrained": "rece_lite.export",
    "Patch": "rece_lite.patch",
    "ReceResult": "rece_lite.erase",
    "derive_embedding": "rece_lite.erase",
    "rece_erase": "rece_lite.erase",
    "snapshot": "rece_lite.patch",
    "uce_erase": "rece_lite.erase",
    "encode": "rece_lite.text",
    "encode_pooled": "rece_lite.text",
    "Pipeline": "rece_lite.loading",
    "load_pipeline": "rece_lite.loading",
    "sample": "rece_lite.sampling",
}

__all__ = [
    "AttentionStore",
    "Recording",
    "attention_mass_on",
    "mass_per_area",
    "mass_ratio",
    "generate_with_attention",
    "record_attention",
    "SolveError",
    "InputError",
    "LoraExport",
    "read_lora_info",
    "save_pretrained",
    "Patch",
    "ReceResult",
    "derive_embedding",
    "rece_erase",
    "snapshot",
    "uce_erase",
    "encode",
    "encode_pooled",
    "Pipeline",
    "load_pipeline",
    "sample",
    "__version__",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'rece_lite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from rece_lite.attention import (
        AttentionStore,
        Recording,
        attention_mass_on,
        generate_with_attention,
        mass_per_area,
        mass_ratio,
        record_attention,
    )
    from rece_lite.closed_form import SolveError
    from rece_lite.erase import ReceResult, derive_embedding, rece_erase, uce_erase
    from rece_lite.errors import InputError
    from rece_lite.export import LoraExport, read_lora_info, save_pretrained
    from rece_lite.loading import Pipeline, load_pipeline
    from rece_lite.patch import Patch, snapshot
    from rece_lite.sampling import sample
    from rece_lite.text import encode, encode_pooled
