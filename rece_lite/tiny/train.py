"""Train the miniature Stable Diffusion, from scratch or on from a saved one: ``python -m rece_lite.tiny.train``.

Stages (each resumable; a finished stage is skipped on the next run):

1. ``vae``: the autoencoder, on pictures of the world (reconstruction + a tiny KL term).
2. ``classifier``: the evaluator's shape CNN (:class:`rece_lite.evaluate.ShapeNet`).
3. ``diffusion``: the UNet and the text encoder jointly, on the epsilon objective,
   latents pre-encoded; an EMA of both is what gets shipped.

With ``--init FOLDER`` stages 1 and 2 are skipped: the UNet and text encoder of that
pipeline are fine-tuned (its autoencoder and latent scaling kept).  ``--ground-weight w``
adds TokenCompose's token loss (:func:`rece_lite.attention.maps.token_loss`) on every
``attn2`` layer: each colour and shape word of a caption is pushed into the mask of the
object it names, ``L = ‖ε − ε̂‖² + w · L_token``.

Intermediate state lives in ``--work`` (default ``runs/tiny``, not committed); the
pipeline is written with ``save_pretrained`` to ``--out`` (default ``data/tiny``), which
must not exist unless ``--force`` is given.
Every random draw of step ``k`` comes from a generator seeded with ``(seed, k)``, so
a resumed run takes the same path as an uninterrupted one; each state file records
the settings it was made with, and a run with other settings is refused rather than
mixed in.  All settings are one :class:`TrainConfig` (the model's sizes one
:class:`rece_lite.tiny.model.ModelConfig`), written to ``training.json`` beside the model.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rece_lite.attention.maps import capture_probs, token_loss
from rece_lite.files import UsageError, check_out, staged_dir
from rece_lite.loading import assemble_pipeline, check_device, default_device
from rece_lite.tiny import model as tm
from rece_lite.tiny import world
from rece_lite.tiny.train_config import (  # noqa: F401  (re-exported: `train.TrainConfig`, `train.lr_at` keep working)
    TrainConfig,
    TrainingError,
    _gen,
    _load_state,
    _save_state,
    _set_lr,
    _to_tensor,
    lr_at,
)
from rece_lite.tiny.train_stages import (  # noqa: F401  (re-exported)
    classifier_batch,
    encode_latents,
    train_classifier,
    train_vae,
)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"


# ----------------------------------------------------------------------- diffusion
def _tokenize_all(tokenizer, shapes: np.ndarray, colours: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    caps = [world.scene_caption(s, c, rng) for s, c in zip(shapes, colours)]
    return tokenizer(
        caps, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def concept_tokens(tokenizer) -> dict[int, tuple[str, int]]:
    """Token id -> ("colour" or "shape", index) for every concept word and synonym of the world."""
    out: dict[int, tuple[str, int]] = {}
    for kind, names in (("colour", world.COLOURS), ("shape", world.SHAPES)):
        for i, name in enumerate(names):
            for w in (name, *world.SYNONYMS[name]):
                (tid,) = tokenizer(w, add_special_tokens=False).input_ids
                out[tid] = (kind, i)
    return out


def grounded_objects(
    ids: torch.Tensor, shapes: np.ndarray, colours: np.ndarray, lookup: dict[int, tuple[str, int]]
) -> torch.Tensor:
    """(B, T) long: which object slot each token names (a colour or shape word of it), -1 for none.

    Args:
        ids: (B, T) token ids of the captions.
        shapes, colours: (B, 2) the scenes' objects (-1: no object in that slot).
        lookup: :func:`concept_tokens`.
    """
    out = torch.full(ids.shape, -1, dtype=torch.long)
    for b, row in enumerate(ids.tolist()):
        for t, tid in enumerate(row):
            if tid not in lookup:
                continue
            kind, i = lookup[tid]
            slots = np.flatnonzero((colours[b] if kind == "colour" else shapes[b]) == i)
            if len(slots):
                out[b, t] = int(slots[0])
    return out


PARTS = ("unet", "te", "ema_unet", "ema_te")


def train_diffusion(
    latents: torch.Tensor,
    scenes: world.Scenes,
    cfg: TrainConfig,
    *,
    work: Path,
    checkpoint_every: int,
    on_checkpoint: Callable[[torch.nn.Module, torch.nn.Module, int, float], None],
    device: str = "cpu",
    init: tuple[torch.nn.Module, torch.nn.Module] | None = None,
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The UNet and text encoder, jointly (fresh, or ``init``'s to fine-tune); returns their EMA copies (on the CPU).

    The loss is ``‖ε − ε̂(z_t, t, c)‖² + cfg.ground_weight · L_token`` (the second term
    only when the weight is > 0; ``scenes.masks`` are then the objects' masks).
    """
    tokenizer = tm.build_tokenizer(cfg.model.max_length)
    torch.manual_seed(cfg.seed)
    if init is None:
        unet, te = tm.build_unet(cfg.model), tm.build_text_encoder(len(tokenizer), cfg.model)
    else:
        unet, te = init
    ema_unet, ema_te = copy.deepcopy(unet), copy.deepcopy(te)
    lookup = concept_tokens(tokenizer)
    masks_all = torch.from_numpy(scenes.masks) if cfg.ground_weight > 0 else None
    parts = dict(zip(PARTS, (unet, te, ema_unet, ema_te)))
    for mod in parts.values():
        mod.to(device)  # before the optimiser exists, so its state lives on the same device
    params = list(unet.parameters()) + list(te.parameters())
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    acp = tm.train_scheduler().alphas_cumprod
    state_path = work / "diffusion_state.safetensors"
    settings = cfg.stage("diffusion")
    start = 0
    if state_path.exists():
        st = _load_state(state_path, settings)
        start = int(st.pop("step").item())
        for prefix, mod in parts.items():
            own = {k[len(prefix) + 1 :]: v.to(device) for k, v in st.items() if k.startswith(prefix + ".")}
            mod.load_state_dict(own)
        opt_state = opt.state_dict()
        for i in range(len(params)):
            if f"opt.{i}.exp_avg" in st:
                opt_state["state"][i] = {n: st[f"opt.{i}.{n}"] for n in ("step", "exp_avg", "exp_avg_sq")}
        opt.load_state_dict(opt_state)
        print(f"resuming diffusion training at step {start}/{cfg.steps}")

    def save_state(k: int) -> None:  # safetensors, not pickles: the optimiser's tensors, flattened
        st = {"step": torch.tensor(k)}
        for prefix, mod in parts.items():
            st.update({f"{prefix}.{n}": v for n, v in mod.state_dict().items()})
        for i, s in opt.state_dict()["state"].items():
            for n in ("step", "exp_avg", "exp_avg_sq"):
                st[f"opt.{i}.{n}"] = torch.as_tensor(s[n])
        _save_state(st, state_path, settings)

    unet.train()
    te.train()
    bar = tqdm(range(start, cfg.steps), desc="unet + text encoder", initial=start, total=cfg.steps)
    t0 = time.time()
    for k in bar:
        _set_lr(opt, cfg.lr * lr_at(k, cfg.steps, cfg.warmup, cfg.final_lr))
        g = _gen(cfg.seed, k)
        idx = torch.randint(0, len(latents), (cfg.batch,), generator=g)
        rng = np.random.default_rng([cfg.seed, k])
        ids = _tokenize_all(tokenizer, scenes.shapes[idx.numpy()], scenes.colours[idx.numpy()], rng)
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, len(acp), (cfg.batch,), generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        zt, t, ids, noise = zt.to(device), t.to(device), ids.to(device), noise.to(device)
        emb = te(ids).last_hidden_state
        with capture_probs(unet) if masks_all is not None else contextlib.nullcontext() as probs:
            mse = F.mse_loss(unet(zt, t, emb).sample, noise)
        loss, ground = mse, None
        if masks_all is not None:
            sel = idx.numpy()
            objects = grounded_objects(ids.cpu(), scenes.shapes[sel], scenes.colours[sel], lookup).to(device)
            ground = token_loss(probs, masks_all[idx].to(device), objects)
            loss = mse + cfg.ground_weight * ground
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + k) / (10 + k))
        with torch.no_grad():
            for e, p in zip(ema_params, params):
                e.lerp_(p, 1 - decay)
        if k % 50 == 0:
            bar.set_postfix(
                mse=f"{mse.item():.4f}", **({"token": f"{ground.item():.4f}"} if ground is not None else {})
            )
        if (k + 1) % checkpoint_every == 0 or k + 1 == cfg.steps:
            save_state(k + 1)
            on_checkpoint(ema_unet, ema_te, k + 1, time.time() - t0)
    return ema_unet.cpu(), ema_te.cpu()


@contextlib.contextmanager
def _quiet_saving():
    """No "Writing model shards" bars from save_pretrained: training has its own."""
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers.utils.logging.enable_progress_bar()


def export_pipeline(
    vae, unet, te, scaling_factor: float, out: Path, info: dict, cfg: TrainConfig, *, force: bool = True
) -> None:
    """Write a real ``StableDiffusionPipeline`` with ``save_pretrained``, atomically (replacing ``out``: ``force``)."""
    vae.register_to_config(scaling_factor=scaling_factor)
    tok = tm.build_tokenizer(cfg.model.max_length)
    pipe = assemble_pipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=tm.sample_scheduler())
    with _quiet_saving(), staged_dir(out, force=force, option="--out") as tmp:
        pipe.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    for mod in (unet, te):
        mod.train()  # assemble_pipeline left them in eval mode; the EMA copies keep no train-time state


# ---------------------------------------------------------------------------- CLI
def _writable(folder: Path, what: str) -> None:
    """Create ``folder`` and check that a file can be written there, before any work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise TrainingError(f"{what} {folder} is not a writable folder ({e.strerror or e})") from None


def _field_help(cls) -> dict[str, str]:
    """Each field's line in a dataclass docstring's ``Attributes:`` section ("a, b: text" names two)."""
    doc = (cls.__doc__ or "").split("Attributes:", 1)[-1]
    out: dict[str, str] = {}
    names: list[str] = []
    for line in doc.splitlines():
        m = re.match(r"\s{8}([a-z_, ]+):\s*(.*)", line)
        if m and not line.startswith(" " * 12):
            names = [n.strip() for n in m.group(1).split(",")]
            for n in names:
                out[n] = m.group(2)
        elif names and line.strip():
            for n in names:
                out[n] += " " + line.strip()
    return out


def _add_fields(p: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (), defaults: bool = True) -> None:
    """One ``--option`` per dataclass field: its type and default from the field, its help from the docstring."""
    helps = _field_help(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        default = getattr(cls(), f.name)
        kw: dict = {"help": helps.get(f.name, "").replace("%", "%%") + f" (default: {default!r})"}
        if isinstance(default, tuple):
            kw.update(type=type(default[0]), nargs="+")
        else:
            kw.update(type=type(default))
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default if defaults else None, **kw)


def _init_model(init: Path) -> tm.ModelConfig:
    """The sizes a saved pipeline was trained with (its ``training.json``)."""
    try:
        saved = json.loads((init / "training.json").read_text())["config"]["model"]
        return tm.ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrainingError(
            f"--init {init} is not a pipeline this script trained (no readable training.json with its model sizes: {e})"
        ) from None


def parse(argv: list[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m rece_lite.tiny.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DATA / "tiny", help="where the pipeline is saved (save_pretrained)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (otherwise refused)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "tiny", help="state and checkpoints (resumable)")
    p.add_argument("--classifier", type=Path, default=None,
                   help="where the shape CNN is saved (default: data/shape_classifier.safetensors when --out is "
                        "data/tiny, else inside --work; not trained with --init)")  # fmt: skip
    _add_fields(p, TrainConfig, skip=("model",))
    _add_fields(p, tm.ModelConfig, defaults=False)
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between saved states and exports")
    p.add_argument("--device", default=None, help="default: cuda, else mps, else cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    a = p.parse_args(argv)
    a.command = "python -m rece_lite.tiny.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    given = {f.name: getattr(a, f.name) for f in fields(tm.ModelConfig) if getattr(a, f.name) is not None}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    try:
        if a.init:
            model = _init_model(Path(a.init))
            clash = {k: v for k, v in given.items() if getattr(model, k) != v}
            if clash:
                raise TrainingError(
                    f"--init {a.init} was trained with other sizes than "
                    f"{', '.join(f'--{k} {v}' for k, v in clash.items())}: "
                    "drop the size options to fine-tune it"
                )
        else:
            model = tm.ModelConfig(**given)
        cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in fields(TrainConfig) if f.name != "model"}, model=model)
        cfg.check()
        if a.checkpoint_every < 1:
            raise TrainingError(f"--checkpoint-every must be >= 1, got {a.checkpoint_every}")
        if a.threads is not None and a.threads < 1:
            raise TrainingError(f"--threads must be >= 1, got {a.threads}")
        if a.device is not None:
            try:
                check_device(a.device)
            except (TypeError, ValueError) as e:
                raise TrainingError(f"--device {a.device}: {e}") from None
        if a.classifier is None:
            at_home = a.out.resolve().parent == DATA.resolve()
            a.classifier = (DATA if at_home else a.work) / "shape_classifier.safetensors"
        try:
            check_out(a.out, force=a.force, option="--out")  # before anything is made: a refused run leaves nothing
        except UsageError as e:
            raise TrainingError(str(e)) from None
        _writable(a.out.parent, "the folder of --out")
        _writable(a.work, "--work")
        if not cfg.init:
            _writable(a.classifier.parent, "the folder of --classifier")
    except TrainingError as e:
        p.error(str(e))
    return cfg, a


def main(argv: list[str] | None = None) -> None:
    cfg, a = parse(argv)
    try:
        run(cfg, a)
    except (TrainingError, UsageError) as e:
        raise SystemExit(f"python -m rece_lite.tiny.train: error: {e}") from None


def _load_init(folder: Path, device: str):
    """The VAE, UNet and text encoder of a saved pipeline, and its latent scaling factor."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    try:
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    except (OSError, ValueError) as e:
        raise TrainingError(f"--init {folder} is not a readable pipeline folder ({e})") from None
    return vae, unet.to(device), te.to(device), float(vae.config.scaling_factor)


def run(cfg: TrainConfig, a: argparse.Namespace) -> None:
    if a.threads:
        torch.set_num_threads(a.threads)
    device = a.device or default_device()
    t_start = time.time()
    print(f"generating {cfg.images} pictures ...", flush=True)
    scenes = world.generate_scenes(cfg.images, seed=cfg.seed, two_object_rate=cfg.two_object_rate,
                                   size=cfg.model.size)  # fmt: skip
    init = None
    if cfg.init:
        vae, unet0, te0, scaling = _load_init(Path(cfg.init), device)
        init = (unet0, te0)
        latents = encode_latents(vae, scenes.images) * scaling
    else:
        vae = train_vae(scenes.images, cfg, a.work, device)
        train_classifier(cfg, a.classifier)
        latents = encode_latents(vae, scenes.images)
        scaling = float(1.0 / latents.std())
        latents = latents * scaling

    def info(step: int, seconds: float) -> dict:
        return {
            "config": asdict(cfg),
            "command": a.command,
            "steps": step,
            "diffusion_seconds_this_run": round(seconds, 1),
            "total_seconds_this_run": round(time.time() - t_start, 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": device,
        }

    def on_checkpoint(unet, te, step: int, seconds: float) -> None:
        export_pipeline(vae, unet, te, scaling, a.work / "pipeline", info(step, seconds), cfg)

    t0 = time.time()
    unet, te = train_diffusion(
        latents, scenes, cfg, work=a.work, checkpoint_every=a.checkpoint_every, on_checkpoint=on_checkpoint,
        device=device, init=init,
    )  # fmt: skip
    export_pipeline(vae, unet, te, scaling, a.out, info(cfg.steps, time.time() - t0), cfg, force=a.force)
    print(f"saved the pipeline to {a.out}; done in {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
