"""Loading Stable Diffusion pipelines (1.x, 2.x, XL): which pipelines rece-lite edits, devices, dtypes.

``load_pipeline("tiny")`` gives the embedded miniature model; a local folder in
``save_pretrained`` layout or a hub id already in the cache loads as the class its
``model_index.json`` names: ``StableDiffusionPipeline`` (SD 1.x, 2.x) or
``StableDiffusionXLPipeline`` (SDXL).  Models whose text reaches the image through
joint attention (FLUX, SD 3: MMDiT) have no cross-attention K/V to edit and are refused
(``docs/mmdit.md`` says how the closed form maps there).  Nothing here downloads unless
the caller's environment allows it.

What the edits see, per family (``d`` = width of the embedding the cross-attention attends to):

* SD 1.x / 2.x: the text encoder's last hidden state, (77, 768) / (77, 1024);
* SDXL: both encoders' penultimate hidden states, concatenated per token, (77, 2048).
  SDXL's pooled embedding (1280) and time ids enter the UNet through ``add_embedding``,
  not through cross-attention: no K/V edit touches that path (see :func:`sample`).

Prompts are encoded in :mod:`rece_lite.text` and pictures drawn in :mod:`rece_lite.sampling`;
:mod:`rece_lite.pipeline` gathers the three under its old names.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from rece_lite.errors import InputError
from rece_lite.paths import is_embedded, model_path, tiny_path

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel

# the embedded model's folder (data/tiny in a checkout, inside the package in a wheel), or $RECE_LITE_TINY
TINY_PATH = tiny_path()  # as of import; load_pipeline reads tiny_path() afresh (RECE_LITE_TINY may change)

#: ``model_index.json`` class names that :func:`load_pipeline` loads.
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")

_MMDIT = (
    "{what} denoises with a transformer (MMDiT/DiT, as FLUX and SD 3 do): its text tokens are transformed "
    "block by block by joint attention, so there are no cross-attention key/value matrices acting on a fixed "
    "text embedding for rece-lite's closed form to edit. docs/mmdit.md explains how the closed form maps there "
    "(one linear map, the context embedder). rece-lite edits StableDiffusionPipeline (SD 1.x, 2.x) and "
    "StableDiffusionXLPipeline (SDXL)"
)

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Pipeline(Protocol):
    """The pipeline argument of rece-lite's functions: a diffusers Stable Diffusion pipeline.

    ``StableDiffusionPipeline`` (SD 1.x, 2.x, the miniature model) and
    ``StableDiffusionXLPipeline`` (which adds ``text_encoder_2`` and ``tokenizer_2``) have
    these attributes.  A type for hints and readers; nothing checks it at run time.
    """

    unet: UNet2DConditionModel
    text_encoder: torch.nn.Module
    tokenizer: Any
    vae: AutoencoderKL
    scheduler: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


# ------------------------------------------------------------------------ what we edit
def is_sdxl(pipe: Pipeline) -> bool:
    """Whether ``pipe`` conditions like SDXL: two text encoders, diffusers' SDXL ``encode_prompt``."""
    return (
        getattr(pipe, "text_encoder_2", None) is not None
        and getattr(pipe, "tokenizer_2", None) is not None
        and callable(getattr(pipe, "encode_prompt", None))
    )


def check_supported(pipe: Pipeline) -> None:
    """Refuse pipelines the closed forms here do not cover, saying why."""
    name = type(pipe).__name__
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None:
        raise NotImplementedError(_MMDIT.format(what=name))
    for part in ("unet", "text_encoder", "tokenizer"):
        if getattr(pipe, part, None) is None:
            raise InputError(
                f"{name} has no {part}: a Stable Diffusion pipeline (StableDiffusionPipeline or "
                "StableDiffusionXLPipeline) is needed"
            )
    if "StableDiffusionXL" in name and not is_sdxl(pipe):
        raise InputError(
            f"{name} lacks text_encoder_2 or tokenizer_2: SDXL conditions on two text encoders. If these are "
            "SD 1.x/2.x weights, their model_index.json should name StableDiffusionPipeline"
        )
    if getattr(pipe, "text_encoder_2", None) is not None and not is_sdxl(pipe):
        raise NotImplementedError(
            f"{name} has two text encoders but is not an SDXL pipeline (it lacks tokenizer_2 or diffusers' "
            "encode_prompt): rece-lite edits StableDiffusionPipeline (SD 1.x, 2.x) and StableDiffusionXLPipeline"
        )


def _check_pipe(pipe: Pipeline, parts: tuple[str, ...] = ("unet", "text_encoder", "tokenizer")) -> None:
    """Refuse what is not a diffusers pipeline (None, a string, a lone module) before any attribute is used."""
    if not callable(pipe) or isinstance(pipe, torch.nn.Module) or any(getattr(pipe, p, None) is None for p in parts):
        raise TypeError(
            f"pipe is not a diffusers pipeline (got {type(pipe).__name__}): "
            "give a Stable Diffusion pipeline, e.g. rl.load_pipeline('tiny')"
        )


# ------------------------------------------------------------------------ building, loading
@contextlib.contextmanager
def _quiet(bars: bool = False):
    """Loading without deprecation notes of the libraries' own internals, notes about optional
    image-processor backends (SD pipelines import them; rece-lite never uses them), and, unless
    ``bars``, without the libraries' progress bars."""
    import diffusers
    import transformers

    level = transformers.logging.get_verbosity()
    had = transformers.utils.logging.is_progress_bar_enabled(), diffusers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    if not bars:
        transformers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # diffusers' load_config passes an argument huggingface_hub has deprecated: not the user's to fix
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
            yield
    finally:
        transformers.logging.set_verbosity(level)
        if had[0]:
            transformers.utils.logging.enable_progress_bar()
        if had[1]:
            diffusers.utils.logging.enable_progress_bar()


def _pipeline_classes() -> dict[str, type]:
    with _quiet():
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    return {"StableDiffusionPipeline": StableDiffusionPipeline, "StableDiffusionXLPipeline": StableDiffusionXLPipeline}


def _ready(pipe):
    for part in (pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.vae):
        if part is not None:
            part.eval()  # as from_pretrained leaves them
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assemble_pipeline(*, unet, text_encoder, tokenizer, vae, scheduler):
    """A ``StableDiffusionPipeline`` from its parts: no safety checker, progress bar off, parts in eval mode.

    The one place the pipeline's eight constructor arguments are spelled out (the miniature
    model's training export, the random-weight SD 1.4 / 2.1 pipelines and the tests all use it).
    """
    StableDiffusionPipeline = _pipeline_classes()["StableDiffusionPipeline"]
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,  # the miniature model draws coloured shapes; random weights draw noise
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _ready(pipe)


def assemble_sdxl_pipeline(*, unet, text_encoder, text_encoder_2, tokenizer, tokenizer_2, vae, scheduler):
    """A ``StableDiffusionXLPipeline`` from its parts: no watermarker, progress bar off, parts in eval mode.

    ``force_zeros_for_empty_prompt`` stays on, as in SDXL 1.0's ``model_index.json``: without a
    negative prompt the unconditional branch sees zeros, not the empty prompt's embedding.
    """
    StableDiffusionXLPipeline = _pipeline_classes()["StableDiffusionXLPipeline"]
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return _ready(pipe)


def default_device() -> str:
    """``cuda`` when available, else ``mps`` (Apple GPUs) when available, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` this machine has (None: :func:`default_device`), or a refusal naming it.

    The one place rece-lite decides and checks devices (``load_pipeline``, the training script).
    """
    if device is None:
        return torch.device(default_device())
    if isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise InputError(f"device={device!r} is not a device name: use 'cuda', 'cuda:1', 'mps' or 'cpu'") from None
    elif isinstance(device, torch.device):
        dev = device
    else:
        raise TypeError(f"device must be a string such as 'cuda' or 'cpu' (or a torch.device), got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device={device!r}, but this torch sees no CUDA device: use 'cpu', or leave device unset")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device={device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device={device!r}, but MPS is not available here: use 'cpu', or leave device unset")
    elif dev.type != "cpu":
        raise InputError(f"device={device!r}: rece-lite runs on 'cuda', 'mps' or 'cpu'")
    return dev


def _check_dtype(dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float16 or torch.float32, got {dtype!r}")
    if dtype not in _FLOAT_DTYPES:
        raise InputError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype}")
    if device.type == "mps" and dtype == torch.float64:
        raise InputError("dtype=torch.float64 is not supported on 'mps': use torch.float32")
    return dtype


class _NotAnIndex(InputError):
    """A ``model_index.json`` that is JSON but not an object: said as it is, not as a missing model."""


def _pipeline_class(index: dict, model: str | os.PathLike) -> type:
    """The class a ``model_index.json`` names, if rece-lite can edit it; a clear refusal otherwise."""
    if not isinstance(index, dict):
        raise _NotAnIndex(
            f"{str(model)!r}: its model_index.json holds a JSON {type(index).__name__}, not an object naming the "
            "pipeline class (`_class_name`): it is not a diffusers model folder"
        )
    name = index.get("_class_name")
    classes = _pipeline_classes()
    if isinstance(name, str) and name in classes:
        return classes[name]
    if "transformer" in index and "unet" not in index:
        raise NotImplementedError(_MMDIT.format(what=f"{str(model)!r} ({name})"))
    raise NotImplementedError(
        f"{str(model)!r} is a {name}, not a text-to-image Stable Diffusion pipeline: rece-lite loads "
        f"{' and '.join(SUPPORTED_PIPELINES)} folders (SD 1.x, 2.x and XL)"
    )


def load_pipeline(
    model: str | os.PathLike = "tiny",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Pipeline:
    """A Stable Diffusion pipeline ready to sample and to edit, of the class its folder names.

    Args:
        model: ``"tiny"`` (the embedded miniature model; ``"tiny-grounded"`` and
            ``"tiny-ungrounded"`` name its variants, see :mod:`rece_lite.paths`), a local folder in
            ``save_pretrained`` layout, or a hub id already in the local cache
            (e.g. ``"CompVis/stable-diffusion-v1-4"``, ``"stabilityai/stable-diffusion-2-1"``,
            ``"stabilityai/stable-diffusion-xl-base-1.0"``).
        device: ``"cuda"``, ``"mps"`` or ``"cpu"`` (or ``"cuda:1"``, a ``torch.device``);
            default ``cuda`` when available, else ``mps`` when available, else ``cpu``.
        dtype: a floating ``torch.dtype``; default float16 on CUDA, float32 elsewhere.

    Returns:
        A ``StableDiffusionPipeline`` (SD 1.x, 2.x) or ``StableDiffusionXLPipeline`` (SDXL)
        on ``device``.  Real models keep diffusers' progress bars (loading and sampling);
        the miniature model, which samples in a blink, has them off.

    Raises:
        FileNotFoundError: the model is neither the embedded one, a folder, nor cached.
        NotImplementedError: the folder holds another kind of pipeline (e.g. FLUX or SD 3,
            which have no cross-attention K/V: see ``docs/mmdit.md``).
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be 'tiny', a folder or a hub id (a str or os.PathLike), got {type(model).__name__} {model!r}"
        )
    dev = check_device(device)
    dtype = _check_dtype(dtype, dev)
    tiny = is_embedded(str(model))  # "tiny", "tiny-grounded", "tiny-ungrounded"
    if tiny:
        folder = model_path(str(model))
        if not (folder / "model_index.json").exists():
            raise FileNotFoundError(
                f"the embedded model is missing from {folder}; reinstall rece-lite, or train it with "
                "`python -m rece_lite.tiny.train`"
            )
        source: str | os.PathLike = folder
    else:
        source = model
    local = Path(source).is_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    cls = None
    try:
        with _quiet(bars=not tiny):
            from diffusers import DiffusionPipeline

            # 1. Which pipeline: model_index.json's class name (read before any weights are)
            index = DiffusionPipeline.load_config(source, local_files_only=local or offline)
            cls = _pipeline_class(index, model)
            # 2. Its weights, in the dtype asked for
            pipe = cls.from_pretrained(source, local_files_only=local or offline, dtype=dtype)
    except Exception as e:
        if local and cls is not None and not isinstance(e, _NotAnIndex):
            from rece_lite.checks import check_model_folder

            check_model_folder(source, e)  # an error naming the broken file, if one is found
        if isinstance(e, _NotAnIndex) or not isinstance(e, (OSError, ValueError)):
            raise
        where = (
            "is not a folder in save_pretrained layout"
            if local
            else "is neither a local folder nor in the Hugging Face cache"
        )
        if cls is not None:
            where = f"has a model_index.json for {cls.__name__} but its weights could not be loaded"
        raise FileNotFoundError(
            f"could not load {str(model)!r}: it {where}"
            f"{' (HF_HUB_OFFLINE is set, so nothing is downloaded)' if offline else ''}. "
            "Use 'tiny' for the embedded model, or download the weights first where you have network access. "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    check_supported(pipe)
    if local:
        from rece_lite.checks import check_loaded_weights

        check_loaded_weights(pipe, source)  # NaN or inf in a file that loaded
    if tiny:
        pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


