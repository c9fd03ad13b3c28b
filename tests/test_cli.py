"""The command's refusals (fast) and one real run on the embedded model."""

from __future__ import annotations

import json

from rece_lite import cli


def test_unknown_concept_is_refused_with_the_known_ones(tmp_path, capsys):
    rc = cli.main(["erase", "--concept", "dog", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "known concepts: red, green" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_existing_output_is_never_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = cli.main(["erase", "--concept", "red", "--out", str(out)])
    assert rc == 2 and "--force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp directory left behind


def test_bad_method_is_refused(tmp_path, capsys):
    assert cli.main(["erase", "--concept", "red", "--method", "esd", "--out", str(tmp_path / "y")]) == 2


def test_erase_writes_a_loadable_patch_and_a_report(tmp_path):
    import rece_lite as rl

    out = tmp_path / "red"
    assert (
        cli.main(["erase", "--concept", "red", "--method", "rece", "--epochs", "1", "--seeds", "2", "--out", str(out)])
        == 0
    )
    assert {p.name for p in out.iterdir()} == {"patch.safetensors", "report.json", "before.png", "after.png"}
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["epochs"] == 1 and report["version"] == rl.__version__
    assert 0 <= report["erased"]["named"] <= 1 and report["edit_seconds"] < 5
    pipe = rl.load_pipeline("tiny")
    rl.Patch.load(out / "patch.safetensors").apply(pipe)
