"""Attacks, the ESD-x baseline and the benchmark, on random-weight pipelines (fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import random_tiny_pipeline

import rece_lite as rl
from rece_lite import attacks as atk
from rece_lite import bench, layers
from rece_lite import evaluate as ev
from rece_lite.esd import esd_erase
from rece_lite.pipeline import TINY_PATH, encode

FAST = dict(seeds=[0, 1], progress=False)  # two seeds per prompt, no bars
SOFT = dict(steps=4, batch=4, targets_per_prompt=1, sample_steps=2)


@pytest.fixture
def classifier(monkeypatch):
    """The shipped shape CNN where it exists, else a seeded random one (same architecture)."""
    if not ev.CLASSIFIER_PATH.exists():
        torch.manual_seed(0)
        net = ev.ShapeNet().eval()
        monkeypatch.setattr(ev, "shape_classifier", lambda *a, **k: net)
    return ev.shape_classifier()


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


# ---------------------------------------------------------------------------- judge
def test_default_judge_agrees_with_the_evaluator(classifier):
    rng = np.random.default_rng(0)
    from rece_lite.tiny import world

    pairs = zip([0, 1, 2, 3] * 2, [0, 0, 1, 2] * 2, strict=True)  # (shape, colour): half of them red
    imgs = np.stack([world.render(s, c, rng).image for s, c in pairs])
    for concept in ("red", "circle", "scarlet"):
        labels, rate = atk.judge_images(imgs, concept)
        assert len(labels) == len(imgs)
        assert rate == pytest.approx(ev.share_with(ev.classify(imgs), concept))
    assert atk.judge_images(imgs, "red")[1] == pytest.approx(0.5)  # the render is unambiguous
    labels, rate = atk.judge_images(imgs, "red", judge=lambda x: [True] * 3 + [False] * (len(x) - 3))
    assert rate == pytest.approx(3 / len(imgs)) and labels[:4] == ("yes", "yes", "yes", "no")


# ------------------------------------------------------------------------ paraphrase
def test_paraphrase_uses_synonyms_only_and_is_deterministic(rand_pipe):
    r = atk.paraphrase_attack(rand_pipe, "red", steps=2, **FAST)
    assert r.attack == "paraphrase" and r.embeds is None and r.seeds == (0, 1)
    assert len(r.prompts) == 8 and all("red" not in p.split() for p in r.prompts)
    assert {p.split()[1] for p in r.prompts} == {"crimson", "scarlet"}
    assert r.images.shape == (16, 32, 32, 3) and r.images.dtype == np.uint8
    assert len(r.labels) == 16 and r.success_rate == pytest.approx(np.mean([x == "red" for x in r.labels]))
    again = atk.paraphrase_attack(rand_pipe, "red", steps=2, **FAST)
    assert np.array_equal(r.images, again.images) and r.labels == again.labels


# ----------------------------------------------------------------------- soft prompt
def test_free_tokens_pass_through_the_real_text_encoder(rand_pipe):
    # the oracle: the input embedding of "red" in the slot gives exactly the prompt "a red circle"
    ids, slots = atk._slot_ids(rand_pipe, ["a red circle", "a red star"], "red", 1)
    red = rand_pipe.text_encoder.get_input_embeddings().weight[rand_pipe.tokenizer.convert_tokens_to_ids("red")]
    with torch.no_grad():
        got = atk.encode_with_tokens(rand_pipe, ids, slots, red[None])
    torch.testing.assert_close(got, encode(rand_pipe, ["a red circle", "a red star"]))
    ids3, slots3 = atk._slot_ids(rand_pipe, ["a red circle"], "red", 3)
    assert slots3[0].tolist()[:6] == [False, False, True, True, True, False]
    with pytest.raises(ValueError, match="does not contain"):
        atk._slot_ids(rand_pipe, ["a blue circle"], "red", 1)


def test_soft_prompt_lowers_the_loss_and_is_deterministic(rand_pipe):
    snap = rl.snapshot(rand_pipe)
    rl.uce_erase(rand_pipe, "red")
    erased = _state(rand_pipe.unet)
    te = _state(rand_pipe.text_encoder)
    kw = dict(original=snap, n_tokens=3, discrete=False, steps=30, batch=8, targets_per_prompt=1, sample_steps=2,
              **FAST)  # fmt: skip
    r = atk.soft_prompt_attack(rand_pipe, "red", **kw)
    assert r.loss_after < r.loss_before and len(r.losses) == 30
    assert r.tokens.shape == (3, 64) and r.space == "input" and len(r.nearest_words) == 3
    assert r.embeds.shape == (4, 16, 64) and r.images.shape == (8, 32, 32, 3) and r.images.dtype == np.uint8
    assert r.target_images.shape == (4, 32, 32, 3)
    assert r.prompts[0] == "a <v1> <v2> <v3> circle"
    # the attack leaves the model as it found it (erased weights back, no gradients left behind)
    assert not _changed(erased, _state(rand_pipe.unet)) and not _changed(te, _state(rand_pipe.text_encoder))
    assert all(p.grad is None for p in [*rand_pipe.unet.parameters(), *rand_pipe.text_encoder.parameters()])
    # the targets come from the original weights, not the erased ones
    orig = atk.original_images(rand_pipe, snap, ev.concept_prompts("red"), [1000], steps=2)
    assert np.array_equal(orig, r.target_images)
    again = atk.soft_prompt_attack(rand_pipe, "red", **kw)
    assert torch.equal(r.tokens, again.tokens) and np.array_equal(r.images, again.images)
    other = atk.soft_prompt_attack(rand_pipe, "red", **{**kw, "seed": 1, "steps": 2})
    assert not torch.equal(r.tokens, other.tokens)


def test_discrete_soft_prompt_is_a_real_prompt(rand_pipe):
    r = atk.soft_prompt_attack(rand_pipe, "red", **{**SOFT, "steps": 10}, **FAST)
    special = set(rand_pipe.tokenizer.all_special_tokens)
    assert len(r.nearest_words) == 3 and not special & set(r.nearest_words)
    assert r.prompts[0] == f"a {' '.join(r.nearest_words)} circle" and r.prompts[3].endswith(" star")
    # what the attack fed is exactly what the text encoder makes of the words it found
    torch.testing.assert_close(r.embeds, encode(rand_pipe, list(r.prompts)))
    again = atk.soft_prompt_attack(rand_pipe, "red", **{**SOFT, "steps": 10}, **FAST)
    assert again.prompts == r.prompts and np.array_equal(again.images, r.images)


def test_soft_prompt_in_output_space(rand_pipe):
    r = atk.soft_prompt_attack(rand_pipe, "red", space="output", **{**SOFT, "steps": 20, "batch": 8}, **FAST)
    assert r.tokens.shape == (16, 64) and r.nearest_words == () and r.loss_after < r.loss_before
    base = encode(rand_pipe, ["a circle", "a square", "a triangle", "a star"])
    torch.testing.assert_close(r.embeds, base + r.tokens)
    with pytest.raises(ValueError, match="space"):
        atk.soft_prompt_attack(rand_pipe, "red", space="middle", **FAST)


# -------------------------------------------------------------------- concept vector
def test_concept_vector_is_the_mean_difference(rand_pipe, classifier):
    r = atk.concept_vector_attack(rand_pipe, "red", strength=1.5, steps=2, **FAST)
    with_c = encode(rand_pipe, ["a red circle", "a red square", "a red triangle", "a red star"])
    without = encode(rand_pipe, ["a circle", "a square", "a triangle", "a star"])
    v = sum(with_c[i] - without[i] for i in range(4)) / 4
    torch.testing.assert_close(r.vector, v)
    torch.testing.assert_close(r.embeds, without + 1.5 * v)
    assert r.neutral == ("a circle", "a square", "a triangle", "a star") and r.prompts[0] == "a circle + 1.5·v"
    assert r.images.shape == (8, 32, 32, 3) and 0 <= r.success_rate <= 1
    again = atk.concept_vector_attack(rand_pipe, "red", strength=1.5, steps=2, **FAST)
    assert np.array_equal(r.images, again.images)
    # a shape concept: the vector is the shape's, added to colour-only prompts
    s = atk.concept_vector_attack(rand_pipe, "star", steps=2, **FAST)
    assert s.neutral == ("a red", "a green", "a blue", "a yellow")


def test_run_attacks_runs_each_and_refuses_unknown_ones(rand_pipe):
    snap = rl.snapshot(rand_pipe)
    out = atk.run_attacks(rand_pipe, "red", original=snap, soft_prompt_kw=SOFT, sample_steps=2, seeds=[0],
                          progress=False)  # fmt: skip
    assert list(out) == list(atk.ATTACKS) and all(0 <= r.success_rate <= 1 for r in out.values())
    with pytest.raises(ValueError, match="unknown attacks"):
        atk.run_attacks(rand_pipe, "red", attacks=["jailbreak"])


# ------------------------------------------------------------------------------ ESD
def test_esd_trains_only_the_keys_and_values_and_its_patch_applies_and_undoes(rand_pipe):
    snap = rl.snapshot(rand_pipe)
    unet0, te0, vae0 = _state(rand_pipe.unet), _state(rand_pipe.text_encoder), _state(rand_pipe.vae)
    res = esd_erase(rand_pipe, "red", steps=5, batch=4, images_per_prompt=1, sample_steps=2, progress=False)
    trained = {f"{n}.weight" for n in layers.projections(rand_pipe.unet)}
    assert _changed(unet0, _state(rand_pipe.unet)) == trained
    assert not _changed(te0, _state(rand_pipe.text_encoder)) and not _changed(vae0, _state(rand_pipe.vae))
    assert all(p.grad is None for p in rand_pipe.unet.parameters())
    assert all(p.requires_grad for p in rand_pipe.unet.parameters())  # as they were
    assert len(res.losses) == 5 and res.seconds > 0 and res.patch.metadata["method"] == "esd-x"
    tuned = _state(rand_pipe.unet)
    snap.apply(rand_pipe)
    assert not _changed(unet0, _state(rand_pipe.unet))
    res.patch.apply(rand_pipe)
    assert not _changed(tuned, _state(rand_pipe.unet))
    again = random_tiny_pipeline()
    esd_erase(again, "red", steps=5, batch=4, images_per_prompt=1, sample_steps=2, progress=False)
    assert not _changed(tuned, _state(again.unet))  # seeded: the same run gives the same weights


def test_esd_refuses_half_precision(rand_pipe):
    rand_pipe.unet.half()
    with pytest.raises(TypeError, match="float32"):
        esd_erase(rand_pipe, "red", steps=1, progress=False)


# ---------------------------------------------------------------------------- bench
def test_kernel_distance_matches_a_brute_force_sum():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64) + 1
    k = lambda a, b: (float(a @ b) / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert bench.kernel_distance(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    big = torch.randn(400, 8, generator=g)
    assert abs(bench.kernel_distance(big[:200], big[200:])) < 0.2 * bench.kernel_distance(big[:200], big[200:] + 1)


def test_bench_writes_json_markdown_and_png(rand_pipe, classifier, tmp_path):
    before = _state(rand_pipe.unet)
    report = bench.run(
        rand_pipe, "red", seeds=[0, 1], steps=2, repeats=1, progress=False,
        esd_kw=dict(steps=2, images_per_prompt=1, sample_steps=2), soft_prompt_kw=SOFT,
    )  # fmt: skip
    assert not _changed(before, _state(rand_pipe.unet))  # the original weights are back
    assert list(report["rows"]) == list(bench.MODELS)
    for name, row in report["rows"].items():
        assert set(row["attacks"]) == set(atk.ATTACKS)
        assert 0 <= row["erasure"] <= 1 and np.isfinite(row["kid"])
        assert (row["seconds"] is None) == (name == "original")
    bench.write(report, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"bench.json", "bench.md", "bench.png"}
    assert json.loads((tmp_path / "bench.json").read_text())["rows"]["RECE"]["seconds"] > 0
    md = (tmp_path / "bench.md").read_text()
    assert md.startswith("| model | erasure ↓ | paraphrase ↓") and "| ESD-x |" in md
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_command(classifier, tmp_path, capsys):
    random_tiny_pipeline().save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    args = ["--model", str(tmp_path / "model"), "--seeds", "2", "--steps", "2", "--repeats", "1",
            "--esd-steps", "2", "--attack-steps", "2", "--out", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    assert {p.name for p in out.iterdir()} == {"bench.json", "bench.md", "bench.png"}
    assert "| RECE |" in capsys.readouterr().out
    assert bench.main(args) == 2 and "--force" in capsys.readouterr().err  # never overwrites silently
    assert bench.main(["--concept", "dog", "--out", str(tmp_path / "x")]) == 2
    assert "known concepts" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ------------------------------------------------------------ the real model, if trained
@pytest.mark.skipif(not (TINY_PATH / "model_index.json").exists(), reason="embedded model not trained yet")
def test_attacks_are_real_on_the_original_model():
    pipe = rl.load_pipeline("tiny")
    kw = dict(seeds=[0, 1], progress=False)
    assert atk.paraphrase_attack(pipe, "red", **kw).success_rate >= 0.7
    assert atk.concept_vector_attack(pipe, "red", **kw).success_rate >= 0.7
    assert atk.soft_prompt_attack(pipe, "red", **kw).success_rate >= 0.7
