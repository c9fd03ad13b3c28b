"""rece-lite: closed-form concept erasure (UCE, RECE) for Stable Diffusion, for teaching.

    import rece_lite as rl
    pipe = rl.load_pipeline("tiny")
    snap = rl.snapshot(pipe)
    patch = rl.uce_erase(pipe, erase=["red"], guide="", preserve=["blue"])
    c_adv = rl.derive_embedding(pipe, "red", original=snap)
    snap.apply(pipe)                      # undo
    res = rl.rece_erase(pipe, "red", epochs=3)
"""

from rece_lite.attention import (
    AttentionStore,
    Recording,
    attention_mass_on,
    generate_with_attention,
    record_attention,
)
from rece_lite.erase import Patch, ReceResult, derive_embedding, rece_erase, snapshot, uce_erase
from rece_lite.pipeline import encode, load_pipeline

__version__ = "0.1.0"

__all__ = [
    "AttentionStore",
    "Recording",
    "attention_mass_on",
    "generate_with_attention",
    "record_attention",
    "Patch",
    "ReceResult",
    "derive_embedding",
    "encode",
    "load_pipeline",
    "rece_erase",
    "snapshot",
    "uce_erase",
    "__version__",
]
