"""The wheel carries the whole package and the embedded model; the package's surface is what it says."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import rece_lite as rl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "-w", str(out), str(REPO)], check=True, capture_output=True, cwd=out)
    (whl,) = out.glob("rece_lite-*.whl")
    return whl


def _tracked(folder: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", folder], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return out.split()


def test_the_wheel_holds_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = [p.relative_to(REPO).as_posix() for p in (REPO / "rece_lite").rglob("*.py")]
    assert [m for m in modules if m not in names] == []


def test_the_wheel_holds_the_embedded_model_and_the_classifier(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [f for f in _tracked("data") if not f.endswith(".md")]
    assert data, "data/ holds the embedded model"
    assert [f for f in data if "rece_lite/" + f not in names] == []


def test_the_wheel_has_a_license_and_type_marker(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "rece_lite/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)


def test_an_unpacked_wheel_finds_its_own_model(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = "import rece_lite.paths as p; print(p.tiny_path()); print(p.classifier_path())"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    env.pop("RECE_LITE_TINY", None)
    lines = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    tiny, classifier = (Path(x) for x in lines)
    assert tiny.is_relative_to(tmp_path / "site")
    assert (tiny / "model_index.json").is_file()
    assert classifier.is_file()


@pytest.mark.parametrize("name", rl.__all__)
def test_every_public_name_is_importable(name):
    assert getattr(rl, name) is not None
