"""Catalogue ``model folders`` (issue 22): corrupt copies of the model folder.

Truncated or empty files, configs of another width, NaN weights: refused naming the part.
"""

from __future__ import annotations

import json
import math
import shutil

from .harness import add, cli


def register_folders() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    import rece_lite as rl

    cat = "model folders"

    def truncate(rel):
        def f(folder):
            p = folder / rel
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

        return f

    def empty(rel):
        return lambda folder: (folder / rel).write_bytes(b"")

    def config(rel, key, value):
        def f(folder):
            p = folder / rel
            c = json.loads(p.read_text())
            c[key] = value(c[key]) if callable(value) else value
            p.write_text(json.dumps(c))

        return f

    def nan_weights(rel):
        def f(folder):
            p = folder / rel
            t = load_file(p)
            k = sorted(t)[0]
            t[k] = t[k].clone()
            t[k].view(-1)[0] = math.nan
            save_file(t, str(p), metadata={"format": "pt"})

        return f

    cases = {
        "a truncated tokenizer.json": (truncate("tokenizer/tokenizer.json"), "tokenizer.json"),
        "a truncated text_encoder/model.safetensors": (truncate("text_encoder/model.safetensors"), "model.safetensors"),
        "a truncated unet weights file": (truncate("unet/diffusion_pytorch_model.safetensors"),
                                          "diffusion_pytorch_model.safetensors"),
        "an empty vae weights file": (empty("vae/diffusion_pytorch_model.safetensors"),
                                      "diffusion_pytorch_model.safetensors"),
        "a text_encoder config with another hidden_size": (config("text_encoder/config.json", "hidden_size",
                                                                  lambda v: 2 * v), "text_encoder"),
        "a unet config with another cross_attention_dim": (config("unet/config.json", "cross_attention_dim",
                                                                  lambda v: v + 8), "unet"),
        "a unet config that is not JSON": (lambda f: (f / "unet/config.json").write_text("{nope"), "config.json"),
        "no text_encoder folder": (lambda f: shutil.rmtree(f / "text_encoder"), "text_encoder"),
        "a truncated model_index.json": (truncate("model_index.json"), "model_index.json"),
        "NaN in the unet weights": (nan_weights("unet/diffusion_pytorch_model.safetensors"), ("unet", "nan")),
    }
    for label, (corrupt, names) in cases.items():
        def fn(ctx, corrupt=corrupt):
            folder = ctx.tmp / "model"
            shutil.copytree(rl.paths.tiny_path(), folder)
            corrupt(folder)
            ctx.arm()
            rl.load_pipeline(folder, device="cpu")

        add(cat, f"load_pipeline of a copy with {label}", fn, names)

    def cli_corrupt(ctx):
        folder = ctx.tmp / "model"
        shutil.copytree(rl.paths.tiny_path(), folder)
        truncate("text_encoder/model.safetensors")(folder)
        ctx.arm()
        cli(ctx, "erase", "--model", str(folder), "--concept", "red", "--out", "x", "--seeds", "1", "--steps", "1",
            timeout=90)  # fmt: skip

    add(cat, "rece-lite erase --model a copy with a truncated text encoder", cli_corrupt, "model.safetensors",
        limit=120)  # fmt: skip
    del torch
