"""Output folders and files appear whole or not at all, and refuse what would lose the user's files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from rece_lite import files
from rece_lite.files import UsageError, check_out, save_tensors, staged_dir


def test_staged_dir_appears_whole_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "run"
    for version in ("one", "two"):
        with staged_dir(out, force=True) as tmp:
            (tmp / "report.json").write_text(version)
            assert not out.exists() or (out / "report.json").read_text() != version  # not there until the end
        assert (out / "report.json").read_text() == version
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_failure_inside_leaves_the_old_folder_and_no_temp(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError), staged_dir(out, force=True) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_an_existing_folder_needs_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(UsageError, match="--force"), staged_dir(out):
        pass
    assert list(out.iterdir()) == []


def test_parents_created_for_a_failed_run_are_removed(tmp_path):
    with pytest.raises(RuntimeError), staged_dir(tmp_path / "a" / "b" / "run"):
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_dot_dot_is_collapsed_without_creating_the_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with staged_dir("newdir/../x") as tmp:
        (tmp / "f").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


@pytest.mark.parametrize("out", [".", "..", ""])
def test_the_current_folder_its_parents_and_nothing_are_refused(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="--out"):
        check_out(out, force=True)


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(UsageError, match="is a file"):
        check_out(tmp_path / "f", force=True)
    with pytest.raises(UsageError, match="which is a file"):
        check_out(tmp_path / "f" / "run")
    assert (tmp_path / "f").read_text() == "mine"


def test_a_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    # root may write anywhere, so simulate an ordinary user's view of a read-only folder
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)
    with pytest.raises(UsageError, match="not writable"):
        check_out(tmp_path / "run")


def test_output_folders_get_normal_permissions(tmp_path):
    with staged_dir(tmp_path / "run") as tmp:
        (tmp / "f").write_text("1")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o777 & ~mask


def test_sigterm_leaves_no_temp_folder(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from rece_lite.files import staged_dir
        with staged_dir({str(tmp_path / "run")!r}) as tmp:
            (tmp / "half.txt").write_text("half")
            print("ready", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_save_tensors_round_trips_with_metadata_and_no_temp_file(tmp_path):
    t = {"w": torch.arange(6.0).reshape(2, 3).t()}  # non-contiguous on purpose
    save_tensors(t, tmp_path / "w.safetensors", {"k": "v"})
    assert torch.equal(load_file(str(tmp_path / "w.safetensors"))["w"], t["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_save_tensors_into_a_missing_folder_names_the_real_path(tmp_path):
    target = tmp_path / "missing" / "w.safetensors"
    with pytest.raises(FileNotFoundError, match=str(target)):
        save_tensors({"w": torch.zeros(2)}, target)
    assert list(tmp_path.iterdir()) == []


def test_importing_the_command_does_not_import_torch():
    code = "import sys, rece_lite.cli as c; c.parser(); print('torch' in sys.modules, 'diffusers' in sys.modules)"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], f"took {time.perf_counter() - t0:.2f} s"
