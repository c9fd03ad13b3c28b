"""The command: refusals before any work (fast), then real runs on the embedded and a random model."""

from __future__ import annotations

import json

import pytest

import rece_lite as rl
from rece_lite import cli


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_unknown_concept_is_refused_with_the_known_ones(tmp_path, capsys):
    assert cli.main(["erase", "--concept", "dog", "--out", str(tmp_path / "x")]) == 2
    assert "known concepts: red, green" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_never_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["erase", "--concept", "red", "--out", str(out)]) == 2
    assert "--force" in _one_line_error(capsys)
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp directory left behind


def test_an_unknown_method_is_refused_by_its_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["erase", "--concept", "red", "--method", "esd", "--out", str(tmp_path / "y")])
    assert e.value.code == 2
    assert "invalid choice: 'esd'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, says",
    [
        (["erase", "--concept", "red", "--seeds", "0"], "--seeds must be >= 1"),
        (["erase", "--concept", "red", "--steps", "0"], "--steps must be >= 1"),
        (["erase", "--concept", "red", "--epochs", "-1"], "--epochs must be >= 0"),
        (["bench", "--seeds", "1"], "--seeds must be >= 2"),
        (["bench", "--repeats", "0"], "--repeats must be >= 1"),
        (["demo", "--concept", "dog"], "unknown concept 'dog'"),
    ],
)
def test_bad_numbers_are_refused_before_any_work(tmp_path, capsys, args, says):
    assert cli.main([*args, "--out", str(tmp_path / "x")]) == 2
    assert says in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["file/x", ".", "new/../x"])
def test_out_is_checked_before_any_work(tmp_path, monkeypatch, capsys, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("mine")
    monkeypatch.setattr(cli, "COMMANDS", {"erase": lambda args: (args.out and (tmp_path / "ran").write_text("1"))})
    rc = cli.main(["erase", "--concept", "red", "--out", where])
    if where == "new/../x":  # a fine place: the command runs, and "new" is never created
        assert rc == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ran"]
    else:
        assert rc == 2
        assert "--out" in _one_line_error(capsys)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def _raises(exc):
    def command(args):
        raise exc

    return command


def test_an_input_error_from_the_library_is_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    from rece_lite.errors import InputError

    monkeypatch.setattr(cli, "COMMANDS", {"erase": _raises(InputError("lamb must be > 0, got 0"))})
    assert cli.main(["erase", "--concept", "red", "--out", str(tmp_path / "x")]) == 2
    assert _one_line_error(capsys) == "rece-lite: error: lamb must be > 0, got 0"


@pytest.mark.parametrize("bug", [ValueError("an internal shape mismatch"), TypeError("a bad call"), KeyError("x")])
def test_any_other_exception_is_a_bug_and_keeps_its_traceback(tmp_path, monkeypatch, bug):
    monkeypatch.setattr(cli, "COMMANDS", {"erase": _raises(bug)})
    with pytest.raises(type(bug)):
        cli.main(["erase", "--concept", "red", "--out", str(tmp_path / "x")])


def test_the_concept_is_parsed_once_and_handed_to_the_command(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "COMMANDS", {"erase": lambda args: seen.append(args.parsed)})
    assert cli.main(["erase", "--concept", "crimson", "--out", str(tmp_path / "x")]) == 0
    (concept,) = seen
    assert (concept.kind, concept.name, concept.word) == ("colour", "red", "crimson")


def test_version_and_help_answer(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"rece-lite {rl.__version__}"


def test_every_option_has_help():
    p = cli.parser()
    sub = next(a for a in p._actions if a.dest == "cmd")  # argparse keeps subparsers here
    for name, sp in sub.choices.items():
        for action in sp._actions:
            assert action.help, f"rece-lite {name} {action.option_strings} has no help text"


def test_erase_writes_a_loadable_patch_and_a_report(tmp_path):
    out = tmp_path / "red"
    rc = cli.main(["erase", "--concept", "red", "--method", "rece", "--epochs", "1", "--seeds", "2", "--out", str(out)])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"patch.safetensors", "report.json", "before.png", "after.png"}
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["epochs"] == 1
    assert report["sampling"] == {"steps": 20, "guidance": 6.0}  # what sample() used: settings.SAMPLING
    assert report["versions"]["rece_lite"] == rl.__version__
    assert report["device"] == "cpu"
    assert report["dtype"] == "float32"
    assert 0 <= report["erased"]["showing"] <= report["original"]["showing"]
    assert 0 <= report["erased"]["showing_derived"] <= 1
    pipe = rl.load_pipeline("tiny", device="cpu")
    rl.Patch.load(out / "patch.safetensors").apply(pipe)


def test_bench_command(tmp_path, capsys):
    from rece_lite.tiny.model import build_pipeline

    build_pipeline(seed=0).save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    args = ["bench", "--model", str(tmp_path / "model"), "--seeds", "2", "--steps", "2", "--repeats", "1",
            "--esd-steps", "2", "--attack-steps", "2", "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    assert {p.name for p in out.iterdir()} == {"bench.json", "bench.md", "bench.png"}
    assert "| RECE |" in capsys.readouterr().out
    assert json.loads((out / "bench.json").read_text())["command"].startswith("rece-lite bench --model")
    assert cli.main(args) == 2
    assert "--force" in _one_line_error(capsys)
