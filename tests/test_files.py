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


# ------------------------------------------------------------- faults (issue 22)
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_folder_that_appears_during_the_run_is_not_replaced_without_force(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UsageError, match="appeared while this run was working"), staged_dir(out) as tmp:
        (tmp / "result.txt").write_text("new")
        out.mkdir()  # another run (or the user) made it meanwhile
        (out / "mine.txt").write_text("mine")
    assert (out / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_empty_folder_that_appears_during_the_run_is_not_replaced_either(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UsageError, match="appeared"), staged_dir(out):
        out.mkdir()
    assert out.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_forced_replace_swaps_in_one_step(tmp_path, monkeypatch):
    """At no instant is the target missing: os.rename is never used where renameat2 exists."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "v").write_text("old")

    def no_rename(*a):
        raise AssertionError("a two-step rename")

    monkeypatch.setattr(files.os, "rename", no_rename)
    monkeypatch.setattr(files.os, "replace", no_rename)
    with staged_dir(out, force=True) as tmp:
        (tmp / "v").write_text("new")
    assert (out / "v").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_replace_killed_between_its_two_renames_is_put_back_by_the_next_run(tmp_path):
    """The fallback (no renameat2) moves the old folder aside first; killed there, the next run restores it."""
    out = tmp_path / "run"
    aside = tmp_path / f".run.{_dead_pid()}-0123abcd.old"
    aside.mkdir()
    (aside / "mine.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists"):
        check_out(out)  # put back first: the folder exists again, and is not replaced without --force
    assert (out / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_older_rece_lite_s_aside_folder_is_put_back(tmp_path):
    aside = tmp_path / ".run.old.ab_cd123"
    (aside / "old").mkdir(parents=True)
    (aside / "old" / "mine.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists"):
        check_out(tmp_path / "run")
    assert (tmp_path / "run" / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_leftovers_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    for name in (f".run.{dead}-0123abcd.tmp", f".w.safetensors.{dead}-0123abcd.tmp"):
        (tmp_path / name).mkdir() if name.startswith(".run") else (tmp_path / name).write_bytes(b"half")
    keep = tmp_path / f".run.{live}-0123abcd.tmp"  # another run, still working
    keep.mkdir()
    with staged_dir(tmp_path / "run") as tmp:
        (tmp / "a").write_text("1")
    save_tensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run", "w.safetensors", keep.name])


@pytest.mark.parametrize("make", ["folder", "file"])
def test_a_legal_255_byte_name_is_written(tmp_path, make):
    name = "n" * 250 + (".safetensors"[:5] if make == "file" else "")
    target = tmp_path / name
    if make == "folder":
        with staged_dir(target) as tmp:
            (tmp / "a").write_text("1")
        assert (target / "a").read_text() == "1"
    else:
        save_tensors({"w": torch.ones(2)}, target)
        assert torch.equal(load_file(target)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_full_disk_inside_a_staged_folder_is_one_line_naming_out(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(files.WriteError) as info, staged_dir(out, option="--out"):
        raise OSError(28, "No space left on device", "/deep/inside/.tmp/file")
    assert str(info.value) == f"cannot write --out {out}: No space left on device"
    assert isinstance(info.value, UsageError) and info.value.errno == 28
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_save_tensors_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old")
    real_fdopen = os.fdopen

    class Full:
        """The temp file's handle on a disk that fills after 4 bytes."""

        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:4])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fdopen", Full)
    with pytest.raises(files.WriteError, match=f"cannot write {target}: No space left on device"):
        save_tensors({"w": torch.zeros(2)}, target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_a_bug_inside_a_staged_folder_keeps_its_type(tmp_path):
    with pytest.raises(ZeroDivisionError), staged_dir(tmp_path / "run"):
        _ = 1 / 0


def test_a_fifo_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "p.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="p.safetensors is not a regular file"):
        files.check_regular_file(fifo)


_WRITER = textwrap.dedent(
    """
    import sys, time
    from rece_lite.files import staged_dir
    out, version = sys.argv[1], sys.argv[2]
    print("start", flush=True)
    while True:
        with staged_dir(out, force=True) as tmp:
            for i in range(20):
                (tmp / f"f{i}").write_text(version * 100)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_at_random_instants_the_target_is_always_whole(tmp_path, sig):
    """SIGKILL / SIGINT at random points of repeated forced replaces: the target is always one whole version,
    and the next run into the same place leaves nothing else behind."""
    import random

    rng = random.Random(22)
    out = tmp_path / "run"
    with staged_dir(out) as tmp:
        for i in range(20):
            (tmp / f"f{i}").write_text("0" * 100)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for k in range(12):
        # SIGINT as a terminal delivers it: a test run started in the background (`cmd &`) ignores SIGINT, and its
        # children would inherit that (Python then installs no KeyboardInterrupt handler)
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out), str(k % 10)], env=env,
                                stdout=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
        proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(sig)
        proc.wait(timeout=30)
        contents = {p.read_text() for p in out.iterdir()}
        assert len(contents) == 1 and len(list(out.iterdir())) == 20, f"kill {k}: a partial folder"
    with staged_dir(out, force=True) as tmp:
        (tmp / "f0").write_text("last")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_command_on_a_full_disk_prints_one_line_and_keeps_the_old_out(tmp_path):
    """A file-size limit makes every write past 4 KB fail (EFBIG), as a full disk does (ENOSPC)."""
    import resource

    old = tmp_path / "x"
    old.mkdir()
    (old / "mine.txt").write_text("mine")

    def full():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "rece_lite.cli", "erase", "--concept", "red", "--out", str(old),
                          "--force", "--seeds", "1", "--steps", "1", "--method", "uce"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, preexec_fn=full, timeout=300)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == f"rece-lite: error: cannot write --out {old}: File too large"
    assert (old / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
