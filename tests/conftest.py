"""Shared fixtures: small pipelines built in code (random weights, real classes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import rece_lite

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def random_tiny_pipeline(seed: int = 0):
    """The miniature model's architecture with random weights (no checkpoint needed)."""
    from rece_lite.tiny.model import build_pipeline

    return build_pipeline(seed=seed)


@pytest.fixture
def rand_pipe():
    return random_tiny_pipeline()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where a CUDA device is present and are reported as skipped elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu_check.py on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------ devices
FACTORIES = {
    torch.arange, torch.as_tensor, torch.asarray, torch.empty, torch.eye, torch.full, torch.linspace, torch.logspace,
    torch.ones, torch.rand, torch.randint, torch.randn, torch.randperm, torch.scalar_tensor, torch.tensor, torch.zeros,
}  # fmt: skip  # the functions that `with torch.device(...)` redirects: those that take the default device
LIBRARY = Path(rece_lite.__file__).resolve().parent


class CreatedWithoutDevice(TorchFunctionMode):
    """Notes every tensor factory that code under ``under`` calls without naming a device.

    Such a tensor lands on the default device (the CPU), not beside the model: on a GPU that is
    "Expected all tensors to be on the same device", a mix a CPU-only CI cannot see by running the
    code but can see by watching it.  Running under ``with torch.device("meta")`` finds the same
    calls, but diffusers and the tokenizers build CPU tensors and move them (correctly) and fail
    there; this looks only at calls made from the watched files.
    """

    def __init__(self, under: Path = LIBRARY):
        super().__init__()
        self.under = Path(under).resolve()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            frame = sys._getframe(1)
            while frame is not None and "torch" in Path(frame.f_code.co_filename).parts:
                frame = frame.f_back  # through torch's own Python wrappers, to the code that called them
            if frame is not None:
                path = Path(frame.f_code.co_filename).resolve()
                if path == self.under or self.under in path.parents:
                    self.calls.append(f"{frame.f_code.co_filename}:{frame.f_lineno} torch.{func.__name__}")
        return func(*args, **kwargs)


@pytest.fixture
def unnamed_devices():
    """``with unnamed_devices(under=path) as check: ...`` then ``check.calls == []`` (default: all of rece_lite)."""
    return CreatedWithoutDevice
