"""The grounding loss and the training script's fine-tune mode, at toy sizes (seconds on a CPU)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rece_lite.attention import record_attention
from rece_lite.attention.maps import CapturingProcessor, capture_probs, token_loss, word_heat
from rece_lite.tiny import model as tm
from rece_lite.tiny import train as tr
from rece_lite.tiny import world

SMALL = tm.ModelConfig(size=16, vae_channels=(8, 16), unet_channels=(16, 32), unet_heads=2, text_width=16,
                       text_layers=1, text_heads=2)  # fmt: skip


def _square_mask(side: int, rows: slice, cols: slice) -> torch.Tensor:
    m = torch.zeros(side, side)
    m[rows, cols] = 1.0
    return m


def _probs_on(mask_small: torch.Tensor, token: int, T: int = 4, inside: bool = True) -> torch.Tensor:
    """(1, N, T): token ``token`` takes all its attention on the pixels inside (or outside) the mask."""
    n = mask_small.numel()
    p = torch.full((1, n, T), 1.0 / T)
    where = mask_small.flatten() > 0 if inside else mask_small.flatten() == 0
    p[0, :, token] = 0.0
    p[0, where, token] = 1.0
    return p / p.sum(-1, keepdim=True)


def test_token_loss_is_zero_inside_the_mask_and_large_outside():
    mask = _square_mask(16, slice(0, 8), slice(0, 8))  # the top-left quarter of a 16 x 16 picture
    small = torch.nn.functional.interpolate(mask[None, None], size=(4, 4), mode="area")[0, 0]
    masks = mask[None, None]  # (B=1, K=1, 16, 16)
    objects = torch.tensor([[-1, 0, -1, -1]])  # token 1 names object 0
    inside = token_loss([_probs_on(small, 1)], masks, objects)
    outside = token_loss([_probs_on(small, 1, inside=False)], masks, objects)
    uniform = token_loss([torch.full((1, 16, 4), 0.25)], masks, objects)
    assert inside.item() == pytest.approx(0.0, abs=1e-6)
    assert outside.item() == pytest.approx(1.0, abs=1e-6)  # no mass on the object: (1 - 0)^2
    assert uniform.item() == pytest.approx((1 - 0.25) ** 2, abs=1e-6)  # mass share = area share 1/4
    # tokens that name nothing (start, "a", padding) are not supervised
    assert token_loss([_probs_on(small, 1)], masks, torch.full((1, 4), -1)).item() == 0.0


def test_word_heat_sums_the_words_rows():
    maps = torch.rand(5, 3, 3)
    assert torch.equal(word_heat(maps, [1, 3]), maps[1] + maps[3])
    live = torch.rand(2, 9, 5)
    assert torch.equal(word_heat(live, [2], dim=-1), live[..., 2])


def _batch(n: int = 4, seed: int = 0):
    tok = tm.build_tokenizer(SMALL.max_length)
    scenes = world.generate_scenes(n, seed=seed, size=SMALL.size)
    caps = [f"a {world.COLOURS[c]} {world.SHAPES[s]}" for s, c in zip(scenes.shapes[:, 0], scenes.colours[:, 0])]
    ids = tok(caps, padding="max_length", max_length=SMALL.max_length, return_tensors="pt").input_ids
    objects = tr.grounded_objects(ids, scenes.shapes, scenes.colours, tr.concept_tokens(tok))
    return tok, scenes, ids, objects


def test_grounded_objects_mark_colour_and_shape_words_only():
    tok, scenes, ids, objects = _batch()
    assert (objects[:, [2, 3]] == 0).all()  # "a <colour> <shape>": positions 2 and 3 after the start token
    assert (objects[:, [0, 1]] == -1).all() and (objects[:, 4:] == -1).all()  # start, "a", end and padding
    two = world.generate_scenes(8, seed=1, two_object_rate=1.0, size=SMALL.size)
    s, c = two.shapes[0], two.colours[0]
    cap = f"a {world.COLOURS[c[1]]} {world.SHAPES[s[1]]} and a {world.COLOURS[c[0]]} {world.SHAPES[s[0]]}"
    row = tok([cap], padding="max_length", max_length=SMALL.max_length, return_tensors="pt").input_ids
    got = tr.grounded_objects(row, two.shapes[:1], two.colours[:1], tr.concept_tokens(tok))[0].tolist()
    assert got[2:4] == [1, 1] and got[6:8] == [0, 0]  # each word is pushed into its own object


def test_gradients_reach_queries_keys_and_the_text_encoder():
    tok, scenes, ids, objects = _batch()
    torch.manual_seed(0)
    unet, te = tm.build_unet(SMALL), tm.build_text_encoder(len(tok), SMALL)
    z = torch.randn(len(ids), 4, SMALL.latent_size, SMALL.latent_size)
    with capture_probs(unet) as probs:
        unet(z, torch.full((len(ids),), 500), te(ids).last_hidden_state)
    assert len(probs) == len([n for n, _ in unet.named_modules() if n.endswith("attn2")])
    token_loss(probs, torch.from_numpy(scenes.masks), objects).backward()
    for name, p in unet.named_parameters():
        if "attn2.to_q" in name or "attn2.to_k" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert te.get_input_embeddings().weight.grad.abs().sum() > 0
    # the processors are back: nothing is captured outside the block
    unet(z, torch.full((len(ids),), 500), te(ids).last_hidden_state)
    assert not any(isinstance(p, CapturingProcessor) for p in unet.attn_processors.values())


def test_the_recorder_and_the_loss_see_the_same_map():
    """The recorder's word map (heads averaged, the word's rows summed) is the map the loss trains."""
    pipe = tm.build_pipeline(SMALL)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a red circle"
    with record_attention(pipe, max_resolution=None, dtype=torch.float32, steps=[0]) as store:
        pipe(prompt, num_inference_steps=1, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
             output_type="latent")  # fmt: skip
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=SMALL.max_length, return_tensors="pt").input_ids
    z = torch.randn(1, 4, SMALL.latent_size, SMALL.latent_size, generator=torch.Generator().manual_seed(0))
    t = pipe.scheduler.timesteps[0]
    with torch.no_grad(), capture_probs(pipe.unet) as probs:
        pipe.unet(z * pipe.scheduler.init_noise_sigma, t, pipe.text_encoder(ids)[0])
    name = store.layers[0]
    live = word_heat(probs[0], [2], dim=-1)[0]  # "red" is token 2
    recorded = store.token_maps(name, 0)[2].flatten()
    assert torch.allclose(live, recorded, atol=1e-5)


@pytest.fixture
def init_dir(tmp_path):
    pipe = tm.build_pipeline(SMALL)
    folder = tmp_path / "init"
    pipe.save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps({"config": {"model": asdict(SMALL)}}))
    return folder


def _args(init_dir, out, work, *extra):
    return ["--init", str(init_dir), "--out", str(out), "--work", str(work), "--images", "64", "--batch", "8",
            "--steps", "4", "--lr", "1e-3", "--warmup", "1", "--ema", "0", "--ground-weight", "1",
            "--checkpoint-every", "2", "--threads", "1", *extra]  # fmt: skip


def _weights(folder):
    return {**load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")),
            **load_file(str(folder / "text_encoder" / "model.safetensors"))}  # fmt: skip


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fine_tune_is_deterministic_and_resumes_to_the_same_weights(init_dir, tmp_path, monkeypatch):
    tr.main(_args(init_dir, tmp_path / "a", tmp_path / "wa"))
    tr.main(_args(init_dir, tmp_path / "b", tmp_path / "wb"))
    _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    info = json.loads((tmp_path / "a" / "training.json").read_text())
    assert info["config"]["ground_weight"] == 1.0 and info["config"]["init"] == str(init_dir)
    assert info["command"].startswith("python -m rece_lite.tiny.train --init")
    assert "diffusion_seconds_this_run" in info

    # interrupted after the checkpoint at step 2, then resumed: the same weights as one run
    real = tr.export_pipeline

    def stop_at_first_checkpoint(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "export_pipeline", stop_at_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        tr.main(_args(init_dir, tmp_path / "c", tmp_path / "wc"))
    assert not (tmp_path / "c").exists()
    monkeypatch.setattr(tr, "export_pipeline", real)
    tr.main(_args(init_dir, tmp_path / "c", tmp_path / "wc"))
    _same(_weights(tmp_path / "a"), _weights(tmp_path / "c"))

    # a state made with another ground weight is refused, not mixed in
    with pytest.raises(SystemExit, match="ground_weight"):
        tr.main(_args(init_dir, tmp_path / "d", tmp_path / "wc", "--ground-weight", "0.5"))


def test_a_short_run_lowers_the_token_loss(init_dir, tmp_path):
    tok, scenes, ids, objects = _batch(16, seed=5)

    def loss_of(folder) -> float:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        g = torch.Generator().manual_seed(0)
        z = torch.randn(len(ids), 4, SMALL.latent_size, SMALL.latent_size, generator=g)
        t = torch.randint(0, 1000, (len(ids),), generator=g)
        with torch.no_grad(), capture_probs(unet) as probs:
            unet(z, t, te(ids).last_hidden_state)
        return token_loss(probs, torch.from_numpy(scenes.masks), objects).item()

    before = loss_of(init_dir)
    tr.main(_args(init_dir, tmp_path / "out", tmp_path / "w", "--steps", "40", "--checkpoint-every", "40"))
    after = loss_of(tmp_path / "out")
    assert after < 0.7 * before, (before, after)


def test_out_is_refused_without_force_and_left_untouched(init_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        tr.main(_args(init_dir, out, tmp_path / "w"))
    assert e.value.code == 2 and "already exists; pass --force" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "w").exists()  # refused before anything was made
    tr.main(_args(init_dir, out, tmp_path / "w", "--force"))
    assert (out / "model_index.json").exists() and not (out / "notes.txt").exists()


def test_every_config_field_is_an_option(tmp_path):
    p_cfg, a = tr.parse(["--out", str(tmp_path / "x"), "--work", str(tmp_path / "w"), "--warmup", "7",
                         "--final-lr", "0.2", "--weight-decay", "0", "--ema", "0.9", "--vae-lr", "3e-3",
                         "--classifier-lr", "4e-3", "--max-length", "16", "--unet-channels", "16", "32"])  # fmt: skip
    assert (p_cfg.warmup, p_cfg.final_lr, p_cfg.weight_decay, p_cfg.ema, p_cfg.vae_lr, p_cfg.classifier_lr) == (
        7, 0.2, 0.0, 0.9, 3e-3, 4e-3)  # fmt: skip
    assert p_cfg.model.unet_channels == (16, 32)
    helps = tr._field_help(tr.TrainConfig)
    assert all(helps.get(f) for f in ("warmup", "ema", "ground_weight", "init", "vae_lr", "classifier_lr"))


def test_init_with_other_sizes_is_refused(init_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        tr.main(_args(init_dir, tmp_path / "o", tmp_path / "w", "--text-width", "32"))
    assert "other sizes" in capsys.readouterr().err
    assert not np.any([p.name == "o" for p in tmp_path.iterdir()])
