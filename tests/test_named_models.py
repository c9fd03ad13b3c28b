"""The embedded miniature models by name: "tiny", "tiny-grounded", "tiny-ungrounded"."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import torch

import rece_lite as rl
from rece_lite import paths
from rece_lite.recipes import recipe_for, tiny_recipe
from rece_lite.tiny import world

REPO = Path(__file__).resolve().parents[1]


def test_names_resolve_to_folders(monkeypatch):
    monkeypatch.delenv("RECE_LITE_TINY", raising=False)
    assert paths.model_path("tiny") == paths.data_dir() / "tiny"
    assert paths.model_path("tiny-ungrounded") == paths.model_path("tiny")
    assert paths.model_path("tiny-grounded") == paths.data_dir() / "tiny-grounded"
    monkeypatch.setenv("RECE_LITE_TINY", "/somewhere/else")
    assert paths.tiny_path() == Path("/somewhere/else")
    assert paths.model_path("tiny-grounded") == paths.data_dir() / "tiny-grounded"  # only "tiny" moves
    with pytest.raises(ValueError, match="tiny-grounded"):
        paths.model_path("tiny-grounde")
    assert paths.is_embedded("tiny-grounded") and not paths.is_embedded("data/tiny")


def test_every_named_model_loads_and_the_grounded_one_differs():
    pipes = {name: rl.load_pipeline(name, device="cpu") for name in paths.EMBEDDED}
    k = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    w = {name: p.unet.state_dict()[k] for name, p in pipes.items()}
    assert torch.equal(w["tiny"], w["tiny-ungrounded"])
    assert not torch.equal(w["tiny"], w["tiny-grounded"])
    assert (paths.model_path("tiny-grounded") / "training.json").exists()


def test_the_wheel_carries_every_file_of_every_named_model():
    text = (REPO / "pyproject.toml").read_text()  # (tomllib is Python 3.11+; the project supports 3.10)
    block = re.search(r'^"rece_lite\.data" = \[(.*?)^\]', text, re.S | re.M).group(1)
    patterns = re.findall(r'"([^"]+)"', "\n".join(line.split("#")[0] for line in block.splitlines()))
    assert "tiny/*.json" in patterns
    data = REPO / "data"
    for folder in sorted(set(paths.EMBEDDED.values())):
        files = [p.relative_to(data).as_posix() for p in (data / folder).rglob("*") if p.is_file()]
        assert files, folder
        missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/")
                                               for pat in patterns)]  # fmt: skip
        assert not missing, f"pyproject's package-data leaves out {missing}"


def test_named_models_get_the_miniature_recipe():
    assert recipe_for("tiny-grounded", "red") == tiny_recipe("red")
    assert recipe_for("tiny-ungrounded", "triangle") == tiny_recipe("triangle")


def test_the_in_context_recipe_pairs_each_sentence_with_its_guide():
    red = tiny_recipe("red", context=True)
    pairs = dict(zip(red.erase, red.guide))
    assert len(red.erase) == len(red.guide)
    assert pairs["a photo of a red star"] == "a photo of a grey star" and pairs["something red"] == "something grey"
    assert red == tiny_recipe("red")  # a colour toward grey: in context by default
    added = red.preserve[len(tiny_recipe("red", context=False).preserve) :]
    assert "a photo of a blue star" in added and not any("red" in p for p in red.preserve)
    assert not any("grey" in p for p in added)  # the guide is not held in place
    tri = tiny_recipe("triangle", context=True)
    pairs = dict(zip(tri.erase, tri.guide))
    assert pairs["a photo of a green triangle"] == "a photo of a green circle" and pairs["a triangle"] == "a circle"
    assert "a photo of a green star" in tri.preserve and not any("triangle" in p for p in tri.preserve)
    assert tri == tiny_recipe("triangle")  # a shape toward the circle: in context by default
    assert not any("circle" in p for p in tri.preserve[len(tiny_recipe("triangle", context=False).preserve) :])
    empty = tiny_recipe("triangle", guide="", context=True)
    assert dict(zip(empty.erase, empty.guide))["a photo of a green triangle"] == "a photo of a green shape"
    for bare in ("grey", "circle"):  # the neutral concepts themselves go toward "", bare
        assert tiny_recipe(bare) == tiny_recipe(bare, context=False) and tiny_recipe(bare).guide == ""
    assert tiny_recipe("red", guide="") == tiny_recipe("red", guide="", context=False)


@pytest.mark.parametrize("concept", [*world.COLOURS, *world.SHAPES])
@pytest.mark.parametrize("context", [False, True])
def test_no_recipe_names_a_prompt_it_is_measured_on(concept, context):
    """A recipe that erased or preserved the measured sentences would be graded on its own rows."""
    c = world.Concept.parse(concept)
    measured = {*c.prompts(), *c.prompts(synonyms=True), *c.other_prompts()[0]}
    named = set(tiny_recipe(c, context=context).erase) | set(tiny_recipe(c, context=context).preserve)
    assert not named & measured, sorted(named & measured)
