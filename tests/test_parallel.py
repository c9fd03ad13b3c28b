"""The benchmark split across processes with accelerate gives the same table as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rece_lite import bench
from rece_lite.parallel import Split

TIMING = {"seconds", "seconds_runs"}


def test_batches_are_dealt_round_robin():
    assert Split(1, 3).mine(8) == [1, 4, 7]


def test_every_batch_is_someones():
    shares = [Split(r, 3).mine(8) for r in range(3)]
    assert sorted(b for s in shares for b in s) == list(range(8))


def _accelerate() -> list[str]:
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert exe, "accelerate is a dependency of rece-lite: its launcher should be beside python"
    return [exe, "launch", "--cpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _bench(args: list[str], out: Path, processes: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # the same threads in every process
    if processes == 1:
        cmd = [sys.executable, "-m", "rece_lite.cli"]
    else:
        cmd = [*_accelerate(), "--num_processes", str(processes), "-m", "rece_lite.cli"]
    subprocess.run([*cmd, "bench", *args, "--out", str(out)], env=env, check=True, capture_output=True, text=True)
    return json.loads((out / "bench.json").read_text())


def _without_timing(rows: dict) -> dict:
    return {m: {k: v for k, v in r.items() if k not in TIMING} for m, r in rows.items()}


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    """70 rows: two sampling batches of 64, so two processes really split the work."""
    from rece_lite.tiny import world

    path = tmp_path_factory.mktemp("prompts") / "prompts.csv"
    lines = ["prompt,evaluation_seed"]
    for i in range(70):
        lines.append(f"a {world.COLOURS[i % 4]} {world.SHAPES[(i // 4) % 4]},{1000 + i}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_prompts_takes_the_seed_column(prompt_file):
    rows = bench.read_prompts(prompt_file)
    assert (len(rows), rows[0].prompt, rows[0].seed) == (70, "a red circle", 1000)


def test_a_prompt_file_without_a_prompt_column_is_refused(tmp_path):
    (tmp_path / "p.csv").write_text("text,seed\nhello,1\n")
    with pytest.raises(ValueError, match="'prompt' column"):
        bench.read_prompts(tmp_path / "p.csv")


def test_two_processes_give_the_prompt_file_table_of_one(prompt_file, tmp_path):
    args = ["--prompts", str(prompt_file), "--concept", "red", "--steps", "4"]
    one = _bench(args, tmp_path / "one", 1)
    two = _bench(args, tmp_path / "two", 2)
    assert _without_timing(two["rows"]) == _without_timing(one["rows"])


def test_two_processes_give_the_bench_table_of_one(tmp_path):
    from rece_lite.tiny.model import build_pipeline

    build_pipeline(seed=0).save_pretrained(tmp_path / "model")
    args = ["--model", str(tmp_path / "model"), "--seeds", "2", "--steps", "2", "--repeats", "1",
            "--esd-steps", "2", "--attack-steps", "2"]  # fmt: skip
    one = _bench(args, tmp_path / "one", 1)
    two = _bench(args, tmp_path / "two", 2)
    assert _without_timing(two["rows"]) == _without_timing(one["rows"])
