"""Prompts as the edits and the sampler see them: encoding, checking, token positions.

What the edits see, per family (``d`` = width of the embedding the cross-attention attends to):
SD 1.x / 2.x: the text encoder's last hidden state, (77, 768) / (77, 1024); SDXL: both
encoders' penultimate hidden states, concatenated per token, (77, 2048), and a pooled
embedding (1280) that enters the UNet through ``add_embedding`` (:func:`encode_pooled`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from rece_lite.errors import InputError
from rece_lite.loading import Pipeline, _check_pipe, is_sdxl


@torch.no_grad()
def encode(pipe: Pipeline, prompts: str | Sequence[str]) -> torch.Tensor:
    """The per-token text embeddings the UNet's cross-attention attends to (the conditional branch).

    SD 1.x / 2.x: the text encoder's output for prompts padded to the tokenizer's
    ``model_max_length``.  SDXL: diffusers' own ``encode_prompt`` (both encoders'
    penultimate states, concatenated per token); its pooled embedding is
    :func:`encode_pooled`.  All positions are included, padding too.

    Returns:
        (B, T, d) in the text encoder's dtype, on its device (SD 1.x: d = 768; SD 2.x:
        1024; SDXL: 2048).
    """
    _check_pipe(pipe, ("text_encoder", "tokenizer"))
    prompts = _prompt_list(prompts)
    check_prompts(pipe, prompts, "prompts")  # unknown words would become <unk>, long prompts be cut
    if is_sdxl(pipe):
        embeds, _, _, _ = pipe.encode_prompt(
            list(prompts), device=pipe.text_encoder.device, do_classifier_free_guidance=False
        )
        return embeds
    ids = pipe.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0]


@torch.no_grad()
def encode_pooled(pipe: Pipeline, prompts: str | Sequence[str]) -> torch.Tensor:
    """SDXL's pooled text embedding (``text_encoder_2``'s projected EOS state), as ``encode_prompt`` makes it.

    It reaches the UNet through ``add_embedding`` (with the time ids), not through
    cross-attention, so no K/V edit changes what it does.

    Returns:
        (B, 1280) for SDXL, in the text encoder's dtype, on its device.
    """
    if not is_sdxl(pipe):
        raise InputError(f"{type(pipe).__name__} has no pooled text embedding: only SDXL pipelines have one")
    if isinstance(prompts, str):
        prompts = [prompts]
    device = pipe.text_encoder.device
    _, _, pooled, _ = pipe.encode_prompt(list(prompts), device=device, do_classifier_free_guidance=False)
    return pooled


def _prompt_list(prompts: object, what: str = "prompts") -> list[str]:
    """``prompts`` as a non-empty list of strings (one string is a list of one), or a refusal naming ``what``."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Iterable) or isinstance(prompts, (bytes, dict, torch.Tensor)):
        raise TypeError(f"{what} must be a prompt (str) or a list of prompts, got {type(prompts).__name__}")
    out = list(prompts)
    if not out:
        raise InputError(f"{what} is empty: give at least one prompt")
    for i, p in enumerate(out):
        if not isinstance(p, str):
            raise TypeError(f"{what} must be strings, got {type(p).__name__} {p!r} at position {i}")
    return out


def check_prompts(
    pipe: Pipeline, prompts: str | Sequence[str], what: str = "prompt", *, check_length: bool = True
) -> None:
    """Refuse prompts the text encoder would silently change: too long (cut) or with unknown words.

    CLIP's byte-level BPE knows every word, so only length matters for real SD; the miniature
    model's word-level tokenizer maps a word it does not know to ``<|unk|>``, which would erase
    (or preserve) the unknown-word token instead of the concept the user meant.  SDXL's two
    tokenizers are both checked.

    Args:
        prompts: the prompt(s) to check.
        what: the argument's name, for the message (``"erase"``, ``"preserve"``, ...).
        check_length: refuse prompts longer than the text encoder's context too (``sample``
            leaves them to diffusers, which cuts them with a warning, as prompt files expect).
    """
    tokenizers = [pipe.tokenizer]
    second = getattr(pipe, "tokenizer_2", None)
    if second is not None and second is not pipe.tokenizer:
        tokenizers.append(second)
    for p in [prompts] if isinstance(prompts, str) else list(prompts):
        if not isinstance(p, str):
            raise TypeError(f"{what}: prompts must be strings, got {type(p).__name__}")
        for tok in tokenizers:
            _check_prompt(tok, p, what, check_length)


def _check_prompt(tok, p: str, what: str, check_length: bool = True) -> None:
    ids = tok(p, truncation=False, verbose=False).input_ids
    if check_length and len(ids) > tok.model_max_length:
        raise InputError(
            f"{what} prompt {p!r} is {len(ids)} tokens long, more than this text encoder's "
            f"{tok.model_max_length}: shorten it (it would be cut silently)"
        )
    unk = tok.unk_token_id
    if unk is not None and unk in ids and unk not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
        words = [w for w in p.split() if unk in tok(w, add_special_tokens=False).input_ids]
        raise InputError(
            f"{what} prompt {p!r} has words this model's tokenizer does not know: {', '.join(map(repr, words))} "
            "(they would all become the same unknown-word token); use words from its vocabulary"
        )


def last_subject_index(pipe: Pipeline, prompt: str) -> int:
    """Position of a prompt's last word token (the one before EOS), as the newer UCE uses.

    For the empty prompt this is 0, the start token.
    """
    mask = pipe.tokenizer(
        prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).attention_mask
    return int(mask.sum().item()) - 2

