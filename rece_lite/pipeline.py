"""Stable Diffusion pipelines (1.x, 2.x, XL): loading, prompts, sampling, under one name.

The code lives in three modules, one idea each; this module gathers their public names so
that ``from rece_lite.pipeline import sample`` (and every older import) keeps working:

* :mod:`rece_lite.loading` — which pipelines rece-lite edits (:func:`check_supported`),
  :func:`load_pipeline`, :func:`assemble_pipeline`, devices (:func:`default_device`,
  :func:`check_device`) and dtypes;
* :mod:`rece_lite.text` — :func:`encode`, :func:`encode_pooled`, :func:`check_prompts`,
  :func:`last_subject_index`;
* :mod:`rece_lite.sampling` — :func:`sample`, :func:`image_latents`.

``load_pipeline("tiny")`` gives the embedded miniature model; a local folder in
``save_pretrained`` layout or a hub id already in the cache loads as the class its
``model_index.json`` names.  Models whose text reaches the image through joint attention
(FLUX, SD 3: MMDiT) have no cross-attention K/V to edit and are refused (``docs/mmdit.md``).
"""

from __future__ import annotations

from rece_lite.loading import (
    SUPPORTED_PIPELINES,
    TINY_PATH,
    Pipeline,
    assemble_pipeline,
    assemble_sdxl_pipeline,
    check_device,
    check_supported,
    default_device,
    is_sdxl,
    load_pipeline,
)
from rece_lite.sampling import image_latents, sample
from rece_lite.text import check_prompts, encode, encode_pooled, last_subject_index

#: The old private name of :func:`check_device` (``rece_lite.tiny.train`` imports it).
_check_device = check_device

__all__ = [
    "SUPPORTED_PIPELINES",
    "TINY_PATH",
    "Pipeline",
    "assemble_pipeline",
    "assemble_sdxl_pipeline",
    "check_device",
    "check_prompts",
    "check_supported",
    "default_device",
    "encode",
    "encode_pooled",
    "image_latents",
    "is_sdxl",
    "last_subject_index",
    "load_pipeline",
    "sample",
]
