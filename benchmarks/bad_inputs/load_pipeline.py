"""Catalogue ``load_pipeline``: folders, devices and dtypes that are not what rece-lite loads.

Also a folder saved from a small SDXL pipeline, which must load (valid).
"""

from __future__ import annotations

import json
import shutil

from .harness import REPO, Broken, Weak, add


def register_load() -> None:
    import torch

    import rece_lite as rl

    cat = "load_pipeline"

    def folder(make, label, names, **kw):
        def fn(ctx):
            path = make(ctx)
            ctx.arm()
            pipe = rl.load_pipeline(path, device="cpu", **kw)
            raise Weak(f"loaded as {type(pipe).__name__}")

        add(cat, f"load_pipeline({label})", fn, names)

    def index(content):
        def make(ctx):
            p = ctx.tmp / "mdl_dir"
            p.mkdir()
            (p / "model_index.json").write_text(content if isinstance(content, str) else json.dumps(content))
            return p

        return make

    folder(lambda c: c.tmp / "mdl_dir", "a missing folder", "mdl_dir")
    folder(lambda c: (c.tmp / "mdl_dir").mkdir() or c.tmp / "mdl_dir", "an empty folder", "mdl_dir")
    folder(index("{not json"), "a folder whose model_index.json is not JSON", ("mdl_dir", "model_index"))
    folder(index([1, 2]), "a folder whose model_index.json is a list", ("mdl_dir", "model_index"))
    folder(index({"_class_name": "StableDiffusionPipeline"}), "a model_index.json and nothing else", "mdl_dir")
    sdxl_index = {"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                  "text_encoder": ["transformers", "CLIPTextModel"],
                  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}  # fmt: skip
    folder(index(sdxl_index), "an SDXL model_index.json without weights", "mdl_dir")
    flux = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
            "text_encoder": ["transformers", "CLIPTextModel"]}  # fmt: skip
    folder(index(flux), "an MMDiT (FLUX) model_index.json", ("flux", "mmdit"))
    sd3 = {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]}
    folder(index(sd3), "an MMDiT (SD3) model_index.json", ("StableDiffusion3", "mmdit"))
    folder(index({"_class_name": "StableDiffusionImg2ImgPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}),
           "an img2img model_index.json", ("img2img", "mdl_dir"))  # fmt: skip
    folder(index({"_class_name": "NotAPipeline"}), "an unknown class", "NotAPipeline")

    def tiny_copy_folder(change):
        def make(ctx):
            p = ctx.tmp / "mdl_dir"
            shutil.copytree(REPO / "data" / "tiny", p)
            change(p)
            return p

        return make

    def truncate_unet(p):
        f = next((p / "unet").glob("*.safetensors"))
        f.write_bytes(f.read_bytes()[:1000])

    def garble_unet(p):
        f = next((p / "unet").glob("*.safetensors"))
        f.write_bytes(b"\0" * 5000)

    def lie_sdxl(p):
        idx = json.loads((p / "model_index.json").read_text())
        idx["_class_name"] = "StableDiffusionXLPipeline"
        (p / "model_index.json").write_text(json.dumps(idx))

    def bad_unet_config(p):
        (p / "unet" / "config.json").write_text("{oops")

    folder(tiny_copy_folder(truncate_unet), "the tiny model with its UNet weights truncated", ("mdl_dir", "unet"))
    folder(tiny_copy_folder(garble_unet), "the tiny model with zeroed UNet weights", ("mdl_dir", "unet"))
    folder(tiny_copy_folder(lambda p: shutil.rmtree(p / "unet")), "the tiny model without unet/", ("mdl_dir", "unet"))
    folder(tiny_copy_folder(lambda p: shutil.rmtree(p / "tokenizer")), "the tiny model without tokenizer/",
           ("mdl_dir", "tokenizer"))  # fmt: skip
    folder(tiny_copy_folder(bad_unet_config), "the tiny model with a corrupt unet/config.json", ("mdl_dir", "unet"))
    folder(tiny_copy_folder(lie_sdxl), "SD weights under an SDXL model_index.json", ("mdl_dir", "text_encoder_2", "XL"))

    def a_file(ctx):
        p = ctx.tmp / "model.safetensors"
        p.write_bytes(b"x" * 100)
        return p

    folder(a_file, "a single file", "model.safetensors")
    folder(lambda c: "", "''", "model")
    folder(lambda c: None, "None", "model")
    folder(lambda c: 42, "42", "model")
    folder(lambda c: "CompVis/no-such-model", "an uncached hub id (offline)", "CompVis/no-such-model")
    for label, dev in [("'tpu'", "tpu"), ("'cuda' (none here)", "cuda"), ("'cuda:7'", "cuda:7"), ("3", 3),
                       ("'gpu'", "gpu")]:  # fmt: skip
        add(cat, f"load_pipeline('tiny', device={label})",
            lambda ctx, v=dev: rl.load_pipeline("tiny", device=v), "device")  # fmt: skip
    for label, dt in [("torch.int8", torch.int8), ("'float16'", "float16"), ("torch.complex64", torch.complex64),
                      ("torch.bool", torch.bool)]:  # fmt: skip
        add(cat, f"load_pipeline('tiny', dtype={label})",
            lambda ctx, v=dt: rl.load_pipeline("tiny", device="cpu", dtype=v), "dtype")  # fmt: skip

    def sdxl_folder(ctx):
        from diffusers import StableDiffusionXLPipeline

        from rece_lite.tiny.model import build_sdxl_pipeline

        p = ctx.tmp / "sdxl"
        build_sdxl_pipeline(seed=0).save_pretrained(p)
        ctx.arm()
        pipe = rl.load_pipeline(p, device="cpu")
        if type(pipe) is not StableDiffusionXLPipeline or getattr(pipe, "text_encoder_2", None) is None:
            raise Broken(f"an SDXL folder loaded as {type(pipe).__name__}, text_encoder_2 "
                         f"{'dropped' if getattr(pipe, 'text_encoder_2', None) is None else 'kept'}")  # fmt: skip
        shutil.rmtree(p)

    add(cat, "load_pipeline(a folder saved from a small SDXL pipeline) (valid)", sdxl_folder, expect="ok")
