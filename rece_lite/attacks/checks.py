"""Argument checks shared by the attacks: each names the argument and says what it expects.

An attack checks everything it is given before it samples or changes anything, so a bad
argument leaves the model as it was.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np


def count(name: str, value: object, low: int) -> int:
    """``value`` if it is an integer >= ``low`` (not a bool, a float or a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def number(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float if it is a finite real number (and > 0 where ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def concept_name(concept: object) -> str:
    """The concept, if it is a non-empty string."""
    if not isinstance(concept, str) or not concept.strip():
        raise ValueError(f"concept must be a non-empty word, e.g. 'red', got {concept!r}")
    return concept


def prompt_list(name: str, prompts: str | Sequence[str], *, allow_empty: bool = False) -> list[str]:
    """``prompts`` as a non-empty list of strings (one string is one prompt), non-empty unless ``allow_empty``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{name} must hold at least one prompt, got none")
    for p in prompts:
        if not isinstance(p, str):
            raise ValueError(f"{name} must be strings, got {type(p).__name__} {p!r}")
        if not allow_empty and not p.strip():
            raise ValueError(f"{name} must be non-empty strings, got {p!r}")
    return prompts


def seed_list(seeds: Sequence[int]) -> tuple[int, ...]:
    """The sampling seeds as a non-empty tuple of integers >= 0."""
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one sampling seed, got none")
    return tuple(count("seeds", s, 0) for s in seeds)


def pictures(name: str, images: object) -> np.ndarray:
    """``images`` if they are (n, H, W, 3) uint8 pictures with n >= 1."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        is_array = isinstance(images, np.ndarray)
        what = f"{images.dtype} array of shape {images.shape}" if is_array else type(images).__name__
        raise ValueError(f"{name} must be (n, H, W, 3) uint8 pictures, got a {what}")
    if not len(images):
        raise ValueError(f"{name} must hold at least one picture, got none")
    return images
