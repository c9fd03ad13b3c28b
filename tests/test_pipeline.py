"""Loading pipelines of each Stable Diffusion kind, refusing what rece-lite cannot edit, device and dtype choice.

Folders are saved from small random pipelines built here (SD 1.x-like, SD 2-like with
v-prediction and linear projections, SDXL-like with two text encoders and a pooled
embedding), so nothing is downloaded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModelWithProjection

import rece_lite as rl
from rece_lite import pipeline as pl
from rece_lite.tiny.model import build_pipeline, build_sdxl_pipeline, build_text_encoder, build_tokenizer, build_vae

SMALL_TEXT = dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                  bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip


def small_sd2_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """SD 2's traits at toy size: linear projections, per-level head counts, v-prediction."""
    torch.manual_seed(seed)
    tok = build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True,
    )  # fmt: skip
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
    )  # fmt: skip
    return pl.assemble_pipeline(
        unet=unet, text_encoder=build_text_encoder(len(tok)), tokenizer=tok, vae=build_vae(), scheduler=scheduler
    )


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------- loading
def test_an_sd1_folder_loads_as_a_stable_diffusion_pipeline(tmp_path):
    build_pipeline(seed=1).save_pretrained(tmp_path / "sd1")
    pipe = rl.load_pipeline(tmp_path / "sd1", device="cpu")
    assert type(pipe) is StableDiffusionPipeline
    assert pipe.unet.dtype == torch.float32


def test_an_sd2_folder_keeps_v_prediction_and_linear_projections(tmp_path):
    saved = small_sd2_pipeline()
    saved.save_pretrained(tmp_path / "sd2")
    pipe = rl.load_pipeline(tmp_path / "sd2", device="cpu")
    assert type(pipe) is StableDiffusionPipeline
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.use_linear_projection is True
    assert _same_weights(pipe.unet, saved.unet)


def test_an_sdxl_folder_loads_as_sdxl_with_both_text_encoders(tmp_path):
    saved = build_sdxl_pipeline(seed=0)
    saved.save_pretrained(tmp_path / "sdxl")
    pipe = rl.load_pipeline(tmp_path / "sdxl", device="cpu")
    assert type(pipe) is StableDiffusionXLPipeline
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert _same_weights(pipe.text_encoder_2, saved.text_encoder_2)
    assert _same_weights(pipe.unet, saved.unet)


def test_an_mmdit_folder_is_refused_before_any_weights_are_read(tmp_path):
    folder = tmp_path / "flux"
    folder.mkdir()
    index = {
        "_class_name": "FluxPipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))  # no weights: refused from the index alone
    with pytest.raises(NotImplementedError, match="docs/mmdit.md"):
        rl.load_pipeline(folder, device="cpu")


def test_another_unet_pipeline_is_refused_by_name(tmp_path):
    folder = tmp_path / "img2img"
    build_pipeline(seed=0).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionImg2ImgPipeline"}))
    with pytest.raises(NotImplementedError, match="StableDiffusionImg2ImgPipeline"):
        rl.load_pipeline(folder, device="cpu")


def test_a_folder_without_model_index_says_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained layout"):
        rl.load_pipeline(tmp_path, device="cpu")


# ---------------------------------------------------------------------------------------------- device, dtype
@pytest.mark.parametrize("device", ["gpu", "cuda:x", "meta"])
def test_a_bad_device_name_is_refused_by_name(device):
    with pytest.raises(ValueError, match="device="):
        rl.load_pipeline("tiny", device=device)


def test_a_device_of_the_wrong_type_is_refused():
    with pytest.raises(TypeError, match="device must be"):
        rl.load_pipeline("tiny", device=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is absent")
def test_cuda_without_a_gpu_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="use 'cpu'"):
        rl.load_pipeline("tiny", device="cuda")


@pytest.mark.parametrize(("dtype", "error"), [("float16", TypeError), (torch.int8, ValueError), (16, TypeError)])
def test_a_bad_dtype_is_refused_by_name(dtype, error):
    with pytest.raises(error, match="dtype"):
        rl.load_pipeline("tiny", device="cpu", dtype=dtype)


def test_default_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pl.default_device() == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pl.default_device() == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pl.default_device() == "cuda"


def test_dtype_defaults_to_float32_off_cuda_and_follows_the_argument():
    assert rl.load_pipeline("tiny", device="cpu").unet.dtype == torch.float32
    assert rl.load_pipeline("tiny", device="cpu", dtype=torch.bfloat16).unet.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------- progress bars
def test_real_models_keep_diffusers_progress_bars_and_tiny_has_none(tmp_path, capfd):
    build_pipeline(seed=0).save_pretrained(tmp_path / "real")
    capfd.readouterr()
    real = rl.load_pipeline(tmp_path / "real", device="cpu")
    assert "Loading pipeline components" in capfd.readouterr().err
    real("a red circle", num_inference_steps=2, output_type="np")
    assert "2/2" in capfd.readouterr().err
    tiny = rl.load_pipeline("tiny", device="cpu")
    tiny("a red circle", num_inference_steps=2, output_type="np")
    assert capfd.readouterr().err == ""


# ---------------------------------------------------------------------------------------------- SDXL glue
def test_check_supported_accepts_sdxl_and_refuses_mmdit():
    pl.check_supported(build_sdxl_pipeline(seed=0))
    flux_like = type("FluxPipeline", (), {"transformer": torch.nn.Linear(4, 4), "unet": None})()
    with pytest.raises(NotImplementedError, match="joint attention"):
        pl.check_supported(flux_like)


def test_sdxl_encode_is_what_the_unet_attends_to():
    pipe = build_sdxl_pipeline(seed=0)
    attn2 = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    seen = []
    attn2.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["encoder_hidden_states"]),
                                with_kwargs=True)  # fmt: skip
    pipe("a red circle", num_inference_steps=1, guidance_scale=5.0, output_type="latent")
    emb = rl.encode(pipe, "a red circle")
    assert emb.shape == (1, 16, 96)
    assert torch.equal(seen[0][1], emb[0])  # batch [unconditional, conditional]


def test_sdxl_encode_concatenates_both_penultimate_states():
    pipe = build_sdxl_pipeline(seed=0)
    ids = pipe.tokenizer("a red circle", padding="max_length", max_length=16, return_tensors="pt").input_ids
    first = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    second = pipe.text_encoder_2(ids, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(rl.encode(pipe, "a red circle"), torch.cat([first, second], dim=-1))


def test_sdxl_pooled_embedding_is_the_second_encoders_projection():
    pipe = build_sdxl_pipeline(seed=0)
    ids = pipe.tokenizer("a red circle", padding="max_length", max_length=16, return_tensors="pt").input_ids
    assert torch.equal(pl.encode_pooled(pipe, "a red circle"), pipe.text_encoder_2(ids).text_embeds)


def test_pooled_embeddings_are_refused_where_they_mean_nothing():
    sd, xl = build_pipeline(seed=0), build_sdxl_pipeline(seed=0)
    e = rl.encode(xl, "a red circle")
    with pytest.raises(ValueError, match="only SDXL"):
        pl.encode_pooled(sd, "a red circle")
    with pytest.raises(ValueError, match="SDXL pipelines"):
        pl.sample(sd, embeds=rl.encode(sd, "a red circle"), pooled=torch.zeros(1, 16), steps=1)
    with pytest.raises(ValueError, match="goes with embeds"):
        pl.sample(xl, "a red circle", pooled=torch.zeros(1, 16), steps=1)
    with pytest.raises(ValueError, match=r"expected \(1, 16\)"):
        pl.sample(xl, embeds=e, pooled=torch.zeros(2, 16), steps=1)


def test_sdxl_sampling_from_an_embedding_with_the_prompts_pooled_equals_sampling_the_prompt():
    pipe = build_sdxl_pipeline(seed=0)
    prompt = "a red circle"
    by_prompt = pl.sample(pipe, prompt, seeds=[3], steps=2)
    e, pooled = rl.encode(pipe, prompt), pl.encode_pooled(pipe, prompt)
    by_embeds = pl.sample(pipe, embeds=e, pooled=pooled, seeds=[3], steps=2)
    assert np.array_equal(by_prompt, by_embeds)


def test_check_prompts_checks_both_sdxl_tokenizers():
    pipe = build_sdxl_pipeline(seed=0)
    pipe.tokenizer_2.model_max_length = 4
    pl.check_prompts(pipe, "a red")
    with pytest.raises(ValueError, match="shorten it"):
        pl.check_prompts(pipe, "a red circle", what="erase")


# ---------------------------------------------------------------------------------------------- typing
@pytest.mark.parametrize("make", [build_pipeline, build_sdxl_pipeline])
def test_both_pipeline_classes_have_what_the_protocol_names(make):
    pipe = make(seed=0)
    missing = [name for name in pl.Pipeline.__annotations__ if getattr(pipe, name, None) is None]
    assert missing == []


def test_sampling_and_encoding_name_the_device_of_every_tensor_they_create(unnamed_devices):
    from rece_lite.tiny.model import build_pipeline

    pipe = build_pipeline(seed=0)
    with unnamed_devices() as check:
        rl.sample(pipe, ["a red circle"], seeds=[0], steps=1)
        rl.sample(pipe, embeds=rl.encode(pipe, ["a red circle"]), seeds=[0], steps=1)
    assert check.calls == []
