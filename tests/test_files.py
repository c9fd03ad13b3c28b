"""Atomic writes."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from rece_lite.files import new_dir_for, replace_dir, save_tensors


def test_replace_dir_swaps_a_whole_directory_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "run"
    for version in ("one", "two"):
        tmp = new_dir_for(out)
        (tmp / "report.json").write_text(version)
        replace_dir(tmp, out)
        assert (out / "report.json").read_text() == version
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_save_tensors_round_trips_with_metadata_and_no_temp_file(tmp_path):
    t = {"w": torch.arange(6.0).reshape(2, 3).t()}  # non-contiguous on purpose
    save_tensors(t, tmp_path / "w.safetensors", {"k": "v"})
    assert torch.equal(load_file(str(tmp_path / "w.safetensors"))["w"], t["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
