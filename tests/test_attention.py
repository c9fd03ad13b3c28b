"""Cross-attention recording: faithful (images unchanged), correct (distributions of the
conditional branch), tidy (processors restored) and small (bytes as stated)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_tiny_pipeline

from rece_lite.attention import (
    SD14_RESOLUTIONS,
    RecordingProcessor,
    attention_mass_on,
    generate_with_attention,
    record_attention,
    store_size,
)

PROMPT = "a red circle"
T = 16  # the miniature tokenizer's model_max_length


def run(pipe, prompt=PROMPT, steps=2, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, generator=g, output_type="np", **kwargs).images


@pytest.fixture(scope="module")
def pipe():
    return random_tiny_pipeline()


@pytest.fixture(scope="module")
def recorded(pipe):
    with record_attention(pipe, dtype=torch.float32) as store:
        run(pipe)
    return store


def test_maps_are_distributions_over_tokens(pipe, recorded):
    assert recorded.steps == [0, 1] and recorded.num_steps == 2
    for layer in recorded.layers:
        for step in recorded.steps:
            m = recorded.raw(layer, step)  # (images, K, T, H, W)
            assert m.shape[:3] == (1, 1, T)
            torch.testing.assert_close(m.sum(2), torch.ones_like(m.sum(2)), atol=1e-5, rtol=0)
    # per head, float16 storage, pooled below the layer's resolution: still distributions
    with record_attention(pipe, heads="all", max_resolution=4) as store:
        run(pipe, steps=1)
    for layer in store.layers:
        m = store.raw(layer, 0).float()
        assert m.shape == (1, 2, T, 4, 4)  # 2 heads; 8 x 8 layers pooled to 4 x 4
        torch.testing.assert_close(m.sum(2), torch.ones_like(m.sum(2)), atol=2e-3, rtol=0)
    torch.testing.assert_close(store.token_maps().sum(0), torch.ones(4, 4), atol=2e-3, rtol=0)


def test_records_the_conditional_branch(pipe):
    """At step 0 both branches see the same latents, so the cond half of a guided run
    must match an unguided run of the prompt, and not one of the empty prompt."""
    maps = {}
    for name, prompt, scale in (("cfg", PROMPT, 7.5), ("cond", PROMPT, 1.0), ("uncond", "", 1.0)):
        with record_attention(pipe, steps=[0], dtype=torch.float32) as store:
            run(pipe, prompt, steps=1, guidance_scale=scale)
        maps[name] = torch.stack([store.raw(n, 0) for n in store.layers if store.resolution(n) == (8, 8)])
    torch.testing.assert_close(maps["cfg"], maps["cond"], atol=1e-5, rtol=1e-4)
    assert (maps["cfg"] - maps["uncond"]).abs().max() > 1e-3
    # two pictures: the batch is [uncond 0, uncond 1, cond 0, cond 1]; the first picture's
    # latents are the one-picture run's (same seed), so its maps are too
    with record_attention(pipe, steps=[0], images=2, dtype=torch.float32) as store:
        run(pipe, steps=1, num_images_per_prompt=2)
    two = torch.stack([store.raw(n, 0) for n in store.layers if store.resolution(n) == (8, 8)])
    assert two.shape[1] == 2
    torch.testing.assert_close(two[:, :1], maps["cfg"], atol=1e-5, rtol=1e-4)
    assert (store.token_maps(image=1) - store.token_maps(image=0)).abs().max() > 1e-4


def test_recording_leaves_images_bit_identical(pipe):
    before = run(pipe, steps=3)
    with record_attention(pipe, heads="all", max_resolution=None, dtype=torch.float32) as store:
        during = run(pipe, steps=3)
    after = run(pipe, steps=3)
    assert store.steps == [0, 1, 2]
    assert np.array_equal(before, during) and np.array_equal(before, after)


def test_processors_restored_after_an_exception(pipe):
    unet = pipe.unet
    before = dict(unet.attn_processors)
    hooks = len(unet._forward_pre_hooks)
    with pytest.raises(RuntimeError, match="boom"):
        with record_attention(pipe):
            now = unet.attn_processors
            for key, proc in now.items():
                if ".attn2." in key:
                    assert isinstance(proc, RecordingProcessor) and proc.inner is before[key]
                else:
                    assert proc is before[key]  # self-attention untouched
            raise RuntimeError("boom")
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    assert len(unet._forward_pre_hooks) == hooks


def test_token_maps_and_selection(pipe, recorded):
    s = recorded
    assert len(s.layers) == 7 and s.layers[0].startswith("down") and s.layers[-1].startswith("up")
    assert s.layers[2].startswith("mid_block")  # run order: down, mid, up
    assert s.token_maps().shape == (T, 8, 8)  # the largest recorded latent resolution
    torch.testing.assert_close(s.token_maps().sum(0), torch.ones(8, 8), atol=1e-5, rtol=0)
    mid = s.layers[2]
    assert s.resolution(mid) == (4, 4) and s.resolution(2) == (4, 4)
    assert s.token_maps(layer=mid).shape == (T, 4, 4)
    torch.testing.assert_close(s.token_maps(layer=2), s.token_maps(layer=mid))
    torch.testing.assert_close(s.token_maps(layer="mid_block"), s.token_maps(layer=mid))
    one = s.token_maps(layer=0, step=1)
    torch.testing.assert_close(one, s.raw(0, 1)[0, 0].float())
    torch.testing.assert_close(s.token_maps(step=-1), s.token_maps(step=1))
    both = (s.token_maps(layer=0, step=0) + one) / 2
    torch.testing.assert_close(s.token_maps(layer=0), both)
    assert s.token_maps(layer="up_blocks").shape == (T, 8, 8)
    assert s.tokens(PROMPT)[:5] == ["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]
    with pytest.raises(ValueError, match="no recorded cross-attention layer is called 'attn9'"):
        s.token_maps(layer="attn9")
    with pytest.raises(IndexError, match="out of range"):
        s.token_maps(layer=7)
    with pytest.raises(ValueError, match="step 5 was not recorded"):
        s.token_maps(step=5)
    with pytest.raises(ValueError, match="heads='all'"):
        s.token_maps(head=0)


def test_layers_and_steps_chosen_when_recording(pipe):
    with record_attention(pipe, layers=[0, "mid_block"], steps=[-1]) as store:
        run(pipe, steps=3)
    assert len(store.layers) == 2 and store.layers[1].startswith("mid_block")
    assert store.steps == [2] and store.num_steps == 3
    assert store.token_maps().shape == (T, 8, 8)
    with pytest.raises(ValueError, match="prefix"):
        with record_attention(pipe, layers="middle"):
            pass


def test_store_size_matches_the_stated_bound(pipe, recorded):
    assert store_size(SD14_RESOLUTIONS, tokens=77, steps=50) == 89_196_800  # the docstring's number
    sides = [recorded.resolution(n) for n in recorded.layers]
    assert recorded.nbytes == store_size(sides, tokens=T, steps=2, dtype=torch.float32)
    with record_attention(pipe) as store:  # defaults: float16, heads averaged
        run(pipe)
    assert store.nbytes == store_size(sides, tokens=T, steps=2) == recorded.nbytes // 2


def test_attention_mass_on():
    heat = torch.zeros(4, 4)
    heat[:, :2] = 1.0
    left = np.zeros((32, 32), bool)
    left[:, :16] = True
    assert attention_mass_on(heat, left) == pytest.approx(1.0)
    assert attention_mass_on(torch.ones(4, 4), left) == pytest.approx(0.5)
    quarter = np.zeros((32, 32), bool)
    quarter[:4, :4] = True  # a quarter of one map pixel
    assert attention_mass_on(torch.ones(4, 4), quarter) == pytest.approx(1 / 64)
    with pytest.raises(ValueError, match=r"maps\[i\]"):
        attention_mass_on(torch.ones(T, 4, 4), left)


# ------------------------------------------------------------------ SD 1.4 shapes
@pytest.fixture(scope="module")
def sd14_pipe():
    """SD 1.4's UNet and text-encoder shapes (one text layer), random weights, f = 8 VAE, PNDM."""
    from rece_lite.sd14 import random_sd14_pipeline

    return random_sd14_pipeline(text_layers=1)


def test_sd14_architecture(sd14_pipe):
    pipe = sd14_pipe
    with record_attention(pipe) as store:
        run(pipe, steps=2, height=64, width=64)  # 8 x 8 latents
    # PNDM (SD 1.4's scheduler) repeats a timestep: 2 steps are 3 UNet calls, each its own step
    assert len(pipe.scheduler.timesteps) == 3 and pipe.scheduler.timesteps[1] == pipe.scheduler.timesteps[2]
    assert store.steps == [0, 1, 2] and store.num_steps == 3
    assert len(store.layers) == 16
    sides = [store.resolution(n) for n in store.layers]
    assert sides == [(s // 8, s // 8) for s in SD14_RESOLUTIONS]  # 512 px: 64 x 64 latents
    assert store.raw(0, 0).shape == (1, 1, 77, 8, 8)  # 8 heads averaged, 77 tokens
    assert store.token_maps().shape == (77, 8, 8)
    assert store.nbytes == store_size(sides, tokens=77, steps=3) <= store_size(SD14_RESOLUTIONS, tokens=77, steps=3)


def test_two_calls_in_one_block_are_averaged(pipe):
    with record_attention(pipe, dtype=torch.float32) as both:
        run(pipe, seed=0)
        run(pipe, seed=1)
    singles = []
    for seed in (0, 1):
        with record_attention(pipe, dtype=torch.float32) as one:
            run(pipe, seed=seed)
        singles.append(one)
    assert both.steps == [0, 1] and all(c == 2 for per in both.counts.values() for c in per.values())
    expected = (singles[0].token_maps(layer=0, step=1) + singles[1].token_maps(layer=0, step=1)) / 2
    torch.testing.assert_close(both.token_maps(layer=0, step=1), expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------- pictures
def test_viz_functions_draw(pipe):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rece_lite import viz

    kw = dict(num_inference_steps=2)
    rec = generate_with_attention(pipe, PROMPT, **kw)
    other = generate_with_attention(pipe, PROMPT, seed=1, **kw)
    assert rec.tokens[2] == "red" and rec.store.steps == [0, 1]
    figs = [
        viz.overlay(rec.image, rec.store.token_maps()[2]),
        viz.attention_grid(rec.image, rec.store, rec.tokens, layers="up_blocks"),
        viz.step_strip(rec.image, rec.store, rec.tokens, "red"),
        viz.compare_attention({"original": rec, "erased": other}, token_ids=["red", 3]),
        viz.explorer_figure({PROMPT: {"original": rec, "erased": other}}, token="red", layer="mid_block", step=1),
    ]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    explorer = viz.attention_explorer({PROMPT: {"original": rec, "erased": other}})
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    plt.close("all")
