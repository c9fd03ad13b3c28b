"""The soft-prompt attack, in the spirit of UnlearnDiff (Zhang et al., *To Generate or Not?
Safety-Driven Unlearned Diffusion Models Are Still Easy To Generate Unsafe Images ... For Now*,
arXiv 2310.11868).

A free vector takes the concept word's place and is optimised so that the *erased* model
denoises pictures of the concept (made by the original model) well; then the attack samples
from it.  The free vector lives in one of two spaces, each a small class with the same
interface (:class:`SoftPrompt`):

* :class:`FreeTokens` — k token embeddings in the text encoder's *input* space, passed
  through the real text encoder; fed as the nearest vocabulary words (straight-through,
  ``discrete=True``) or as they are;
* :class:`OutputOffset` — a (T, d) offset added to the text-encoder *output* of the prompts
  without the concept word (a white-box attacker who bypasses the text encoder).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import rece_lite.attacks.checks as checks
from rece_lite.attacks.result import Judge, SoftPromptResult, concept_word, default_prompts, generate, judge_images
from rece_lite.erase import Patch
from rece_lite.pipeline import check_prompts, encode, image_latents, sample
from rece_lite.settings import SAMPLING
from rece_lite.tiny.world import replace_word, without_word

Space = Literal["input", "output"]
SPACES: tuple[str, ...] = ("input", "output")
TARGET_SEED = 1000  # the original model draws its target pictures with seeds 1000, 1001, ...
SAMPLE_STEPS = 20  # default sampling steps (as every attack's)
OPT_STEPS = 150  # default optimisation steps


# ----------------------------------------------------------------- the free vector
class SoftPrompt(Protocol):
    """What the optimisation loop needs from a free vector's space."""

    scale: float  # the RMS size of the space's entries: the unit of the step size

    def initial(self, generator: torch.Generator) -> torch.Tensor:
        """The free vector's starting value, drawn from ``generator`` (a CPU generator)."""

    def condition(self, v: torch.Tensor) -> torch.Tensor:
        """(P, T, d) text-encoder outputs for the P prompts with ``v`` in the concept's place, differentiable in v."""

    def nearest_words(self, v: torch.Tensor) -> tuple[str, ...]:
        """The vocabulary words closest to ``v``'s tokens (empty where ``v`` is not made of tokens)."""

    def readable(self, v: torch.Tensor) -> list[str]:
        """The P prompts as text, with ``v`` written in."""


def encode_with_tokens(pipe, ids: torch.Tensor, slots: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The real text encoder's output for ``ids`` whose ``slots`` hold free input embeddings.

    A forward hook on the token-embedding table swaps in ``tokens`` at the slots; the
    positional embeddings, the causal transformer and the final layer norm are the
    encoder's own, so the result is something this text encoder can produce.

    Args:
        ids: (P, T) token ids; slots: (P, T) bool, k per row; tokens: (k, d_in).

    Returns:
        (P, T, d), differentiable in ``tokens``.
    """
    table = pipe.text_encoder.get_input_embeddings()

    def swap(_module, _inputs, out):
        out = out.clone()
        out[slots] = tokens.to(out.dtype).repeat(ids.shape[0], 1)
        return out

    handle = table.register_forward_hook(swap)
    try:
        return pipe.text_encoder(ids)[0]
    finally:
        handle.remove()


def _slot_ids(pipe, prompts: Sequence[str], word: str, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of ``prompts`` with ``word`` replaced by ``n_tokens`` free slots: ids (P, T), slots (P, T) bool."""
    tok = pipe.tokenizer
    T = tok.model_max_length
    wid = tok(word, add_special_tokens=False).input_ids
    placeholder = tok.unk_token_id if tok.unk_token_id is not None else tok.pad_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids, masks = [], []
    for p in prompts:
        full = tok(p, truncation=True, max_length=T).input_ids
        at = next((i for i in range(len(full) - len(wid) + 1) if full[i : i + len(wid)] == wid), None)
        if at is None:
            raise ValueError(
                f"prompts must name the concept: {p!r} has no token(s) of {word!r} (the soft prompt takes their place)"
            )
        row = full[:at] + [placeholder] * n_tokens + full[at + len(wid) :]
        if len(row) > T:
            raise ValueError(f"n_tokens: {p!r} with {n_tokens} free tokens is longer than the tokenizer's {T} tokens")
        ids.append(row + [pad] * (T - len(row)))
        masks.append([False] * at + [True] * n_tokens + [False] * (T - at - n_tokens))
    dev = pipe.text_encoder.device
    return torch.tensor(ids, device=dev), torch.tensor(masks, device=dev)


@dataclass(frozen=True, eq=False)
class FreeTokens:
    """k free token embeddings in the text encoder's input space, in the concept word's place.

    "a red circle" becomes "a <v1> <v2> <v3> circle"; the same k vectors in every prompt.
    With ``discrete``, every forward pass feeds each vector's nearest vocabulary word (cosine;
    special tokens excluded) and the gradient moves the continuous vector (straight-through,
    as PEZ, Wen et al. 2023, and UnlearnDiff's projected descent): what is found is a prompt.

    Attributes:
        pipe: the pipeline whose text encoder is used.
        prompts: the P prompts; word: the concept's word in them.
        ids: (P, T) their token ids with k placeholder slots where the word was.
        slots: (P, T) bool, True at the k slots of each prompt.
        table: (V, d_in) the token-embedding table, float32.
        vocab: (V',) the ids a free token may become (the special tokens excluded).
        unit: (V', d_in) their embeddings, of unit length.
        discrete: feed the nearest words (straight-through) rather than the vectors.
        scale: the RMS entry of the table.
    """

    pipe: object = field(repr=False)
    prompts: tuple[str, ...]
    word: str
    ids: torch.Tensor
    slots: torch.Tensor
    table: torch.Tensor = field(repr=False)
    vocab: torch.Tensor = field(repr=False)
    unit: torch.Tensor = field(repr=False)
    discrete: bool
    scale: float

    @classmethod
    def build(cls, pipe, prompts: Sequence[str], word: str, n_tokens: int, *, discrete: bool = True) -> FreeTokens:
        """The slots of ``n_tokens`` free tokens in place of ``word`` in each prompt."""
        ids, slots = _slot_ids(pipe, prompts, word, n_tokens)
        table = pipe.text_encoder.get_input_embeddings().weight.detach().float()
        special = set(pipe.tokenizer.all_special_ids)
        vocab = torch.tensor(sorted(set(range(len(table))) - special), device=table.device)
        unit = F.normalize(table[vocab], dim=-1)
        scale = table.pow(2).mean().sqrt().item()
        return cls(pipe, tuple(prompts), word, ids, slots, table, vocab, unit, bool(discrete), scale)

    @property
    def n_tokens(self) -> int:
        return int(self.slots[0].sum())

    def initial(self, generator: torch.Generator) -> torch.Tensor:
        """(k, d_in): the table's mean plus its per-dimension spread times standard normal draws."""
        draw = torch.randn(self.n_tokens, self.table.shape[1], generator=generator, device="cpu")
        return self.table.mean(0) + self.table.std(0) * draw.to(self.table.device)

    def nearest(self, v: torch.Tensor) -> torch.Tensor:
        """(k,) the ids of the vocabulary words closest in cosine to the k vectors of ``v``."""
        return self.vocab[(F.normalize(v.detach(), dim=-1) @ self.unit.T).argmax(1)]

    def fed(self, v: torch.Tensor) -> torch.Tensor:
        """(k, d_in) what the text encoder sees: the nearest words' embeddings (straight-through) or ``v``."""
        if not self.discrete:
            return v
        return v + (self.table[self.nearest(v)] - v).detach()

    def condition(self, v: torch.Tensor) -> torch.Tensor:
        return encode_with_tokens(self.pipe, self.ids, self.slots, self.fed(v))

    def nearest_words(self, v: torch.Tensor) -> tuple[str, ...]:
        return tuple(self.pipe.tokenizer.convert_ids_to_tokens(self.nearest(v).tolist()))

    def readable(self, v: torch.Tensor) -> list[str]:
        """The prompts with the words found ("a scarlet white of circle"), or ``<v1> <v2> ...`` if continuous."""
        shown = " ".join(self.nearest_words(v)) if self.discrete else " ".join(f"<v{i + 1}>" for i in range(len(v)))
        return [replace_word(p, self.word, shown) for p in self.prompts]


@dataclass(frozen=True, eq=False)
class OutputOffset:
    """A (T, d) offset added to the text-encoder output of the prompts without the concept word.

    A white-box attacker who bypasses the text encoder.  Every UCE/RECE edit is ``W·M`` with an
    invertible ``M``, so such an attacker can always undo it (``M⁻¹``); it measures the
    optimiser, not the edit.

    Attributes:
        prompts: the P prompts; word: the concept's word in them.
        base: (P, T, d) float32, the encoded prompts without the word ("a circle").
        scale: the RMS entry of ``base``.
    """

    prompts: tuple[str, ...]
    word: str
    base: torch.Tensor = field(repr=False)
    scale: float

    @classmethod
    def build(cls, pipe, prompts: Sequence[str], word: str) -> OutputOffset:
        base = encode(pipe, [without_word(p, word) for p in prompts]).detach().float()
        return cls(tuple(prompts), word, base, base.pow(2).mean().sqrt().item())

    def initial(self, generator: torch.Generator) -> torch.Tensor:
        """(T, d): small normal draws, 1% of the embeddings' RMS size."""
        draw = torch.randn(self.base.shape[1:], generator=generator, device="cpu")
        return (0.01 * self.scale * draw).to(self.base.device)

    def condition(self, v: torch.Tensor) -> torch.Tensor:
        return self.base + v

    def nearest_words(self, v: torch.Tensor) -> tuple[str, ...]:
        return ()

    def readable(self, v: torch.Tensor) -> list[str]:
        return [f"{without_word(p, self.word)} + Δ" for p in self.prompts]


# ---------------------------------------------------------------- the loss and its data
def noised_batch(
    z0: torch.Tensor, alphas_cumprod: torch.Tensor, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """A batch for the denoising loss, drawn on the CPU: which latent, time step, noised latent, noise.

    Args:
        z0: (n, c, h, w) clean latents, on the CPU.
        alphas_cumprod: (N,) ā_t of the training schedule, on the CPU.

    Returns:
        idx (batch,), t (batch,), z_t = √ā_t z0[idx] + √(1-ā_t) ε (batch, c, h, w) and ε.
    """
    idx = torch.randint(0, len(z0), (batch,), generator=generator, device="cpu")
    t = torch.randint(0, len(alphas_cumprod), (batch,), generator=generator, device="cpu")
    noise = torch.randn((batch, *z0.shape[1:]), generator=generator, device="cpu")
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return idx, t, a.sqrt() * z0[idx] + (1 - a).sqrt() * noise, noise


def denoising_loss(unet, cond: torch.Tensor, t: torch.Tensor, zt: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``‖ε_θ(z_t, t, cond) - ε‖²`` (mean), in float32, on the UNet's device."""
    dev = unet.device
    pred = unet(zt.to(dev, unet.dtype), t.to(dev), cond.to(unet.dtype)).sample
    return F.mse_loss(pred.float(), noise.to(dev))


# ------------------------------------------------------------------------ the attack
def _step_counts(steps: int | None, opt_steps: int | None, sample_steps: int | None) -> tuple[int, int]:
    """(sampling steps, optimisation steps), checked, from either spelling.

    Today: ``steps`` are the sampling steps, ``opt_steps`` the optimisation steps.  The old
    spelling (before 0.2) was ``sample_steps`` for the sampling steps and ``steps`` for the
    optimisation steps; a call that gives ``sample_steps`` is read the old way.
    """
    if sample_steps is None:  # today's spelling
        steps = SAMPLE_STEPS if steps is None else steps
        opt_steps = OPT_STEPS if opt_steps is None else opt_steps
        return checks.count("steps", steps, 1), checks.count("opt_steps", opt_steps, 0)
    warnings.warn(
        "soft_prompt_attack(sample_steps=...) is the old spelling, in which steps= meant the optimisation steps: "
        "write steps= for the sampling steps and opt_steps= for the optimisation steps",
        DeprecationWarning,
        stacklevel=3,
    )
    if opt_steps is None:  # the old spelling through and through: steps= are the optimisation steps
        steps = OPT_STEPS if steps is None else steps
        return checks.count("sample_steps", sample_steps, 1), checks.count("steps", steps, 0)
    if steps is not None:
        raise TypeError(
            "steps and sample_steps both give the sampling steps here: give steps= (the sampling steps) and "
            "opt_steps= (the optimisation steps)"
        )
    return checks.count("sample_steps", sample_steps, 1), checks.count("opt_steps", opt_steps, 0)


def soft_prompt_attack(
    pipe,
    concept: str,
    *,
    original: Patch | None = None,
    prompts: Sequence[str] | None = None,
    n_tokens: int = 3,
    space: Space = "input",
    discrete: bool = True,
    opt_steps: int | None = None,
    lr: float = 0.05,
    batch: int = 16,
    target_images: np.ndarray | None = None,
    targets_per_prompt: int = 4,
    seed: int = 0,
    seeds: Sequence[int] = range(8),
    steps: int | None = None,
    guidance: float = SAMPLING.guidance,
    judge: Judge | None = None,
    progress: bool = True,
    sample_steps: int | None = None,
) -> SoftPromptResult:
    """Optimise free tokens so the erased model draws the concept again (UnlearnDiff-style).

    The concept word in each prompt ("a red circle") is replaced by a free vector, shared by
    all prompts.  It minimises the erased model's denoising loss
    ``E_t,ε ‖ε_θ'(√ā_t z + √(1-ā_t) ε, t, E(prompt)) - ε‖²`` on latents ``z`` of pictures of the
    concept made by the *original* model, with ``t`` uniform over the training schedule;
    then the attack samples from it.

    ``space="input"`` (default, :class:`FreeTokens`) optimises ``n_tokens`` vectors in the
    text encoder's *input* token-embedding space, passed through the real text encoder
    (UnlearnDiff's threat model: the attacker speaks to the model through its text
    interface).  With ``discrete=True`` (default) the forward pass feeds each vector's
    nearest vocabulary word and the result is a real prompt, in ``prompts``.
    ``discrete=False`` feeds the continuous vectors themselves; on the miniature model those
    over-fit the few target pictures (lower loss than the word "red" itself) yet seldom
    draw red under guidance.  ``space="output"`` (:class:`OutputOffset`) optimises a (T, d)
    offset of the text-encoder output instead.

    Steps: ``steps`` are the sampling steps (as for every attack), ``opt_steps`` the
    optimisation steps.  The old spelling still works, with a DeprecationWarning: a call
    that gives ``sample_steps=`` is read the old way, ``sample_steps`` the sampling steps
    and ``steps`` the optimisation steps (unless ``opt_steps`` is given too).

    Args:
        pipe: the (erased) pipeline under attack; its weights are left as they were.
        concept: e.g. ``"red"``.
        original: :func:`rece_lite.snapshot` of the weights before erasure, to make the
            target pictures (default: ``pipe``'s own weights, i.e. attacking the original).
        prompts: prompts naming the concept (default: :func:`rece_lite.evaluate.concept_prompts`).
        n_tokens: k free tokens that replace the concept word (input space).
        space: ``"input"`` or ``"output"`` (see above).
        discrete: project input-space tokens onto the vocabulary (see above).
        opt_steps: Adam steps (default 150).
        lr: Adam step size, as a fraction of the RMS entry of the token-embedding table
            (input space) or of the encoded prompts (output space), so that one setting
            suits every model.
        batch: (picture, t, noise) triples per step.
        target_images: (n, H, W, 3) uint8 pictures of the concept, the same number for
            each prompt, prompt-major; default: made here by the original model with seeds
            ``1000 + i``, ``targets_per_prompt`` per prompt (disjoint from the sampling seeds).
        targets_per_prompt: target pictures per prompt where they are made here.
        seed: seeds the initial vector, the time steps and the noise.
        seeds: S sampling seeds per prompt; steps: sampling steps (default 20), also of the
            target pictures; guidance: the guidance scale.
        judge: pictures -> one bool each (default: the miniature world's evaluator).
        progress: show progress bars.
        sample_steps: deprecated: the old spelling of ``steps`` (see above).

    Returns:
        A :class:`~rece_lite.attacks.SoftPromptResult`.
    """
    # 1. check the arguments (nothing is sampled or changed before they all hold)
    t0 = time.perf_counter()
    steps, opt_steps = _step_counts(steps, opt_steps, sample_steps)
    concept = checks.concept_name(concept)
    if space not in SPACES:
        raise ValueError(f"space must be 'input' or 'output', got {space!r}")
    n_tokens = checks.count("n_tokens", n_tokens, 1)
    lr = checks.number("lr", lr, positive=True)
    batch = checks.count("batch", batch, 1)
    targets_per_prompt = checks.count("targets_per_prompt", targets_per_prompt, 1)
    seed = checks.count("seed", seed, 0)
    seeds = checks.seed_list(seeds)
    guidance = checks.number("guidance", guidance)
    prompts = default_prompts(concept, prompts)
    check_prompts(pipe, prompts, "prompts")
    word = concept_word(concept, prompts)
    if target_images is not None:
        checks.pictures("target_images", target_images)
        if len(target_images) % len(prompts):
            raise ValueError(
                f"target_images must hold the same number of pictures for each of the {len(prompts)} prompts, "
                f"got {len(target_images)}"
            )
    g = torch.Generator(device="cpu").manual_seed(seed)
    soft: SoftPrompt = (
        FreeTokens.build(pipe, prompts, word, n_tokens, discrete=discrete)
        if space == "input"
        else OutputOffset.build(pipe, prompts, word)
    )

    # 2. the pictures to fit: the original model's pictures of the concept, as latents
    if target_images is None:
        with original.applied(pipe) if original is not None else contextlib.nullcontext():
            target_seeds = [TARGET_SEED + i for i in range(targets_per_prompt)]
            target_images = sample(pipe, prompts, seeds=target_seeds, steps=steps, guidance=guidance)
    per_prompt = len(target_images) // len(prompts)
    z0 = image_latents(pipe, target_images).float().cpu()
    which = torch.arange(len(prompts), device="cpu").repeat_interleave(per_prompt)  # each target's prompt
    acp = pipe.scheduler.alphas_cumprod.to(device="cpu", dtype=torch.float32)

    # 3. the free vector and its optimiser
    free = soft.initial(g).requires_grad_(True)
    opt = torch.optim.Adam([free], lr=lr * soft.scale)

    def loss_of(v: torch.Tensor, idx, t, zt, noise) -> torch.Tensor:
        cond = soft.condition(v)
        return denoising_loss(pipe.unet, cond[which[idx].to(cond.device)], t, zt, noise)

    # 4. optimise: the denoising loss on freshly noised targets each step; one fixed batch to compare
    fixed = noised_batch(z0, acp, batch, torch.Generator(device="cpu").manual_seed(seed + 7919))
    losses: list[float] = []
    with torch.enable_grad():
        with torch.no_grad():
            loss_before = loss_of(free, *fixed).item()
        for _ in (bar := tqdm(range(opt_steps), desc="soft prompt", disable=not progress, leave=False)):
            loss = loss_of(free, *noised_batch(z0, acp, batch, g))
            (grad,) = torch.autograd.grad(loss, [free])  # only the free vector: no .grad on the model
            free.grad = grad
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        with torch.no_grad():
            loss_after = loss_of(free, *fixed).item()
            embeds = soft.condition(free).detach().to(pipe.text_encoder.dtype)
    free = free.detach()

    # 5. sample from what was found, and judge
    images = generate(pipe, embeds=embeds, seeds=seeds, steps=steps, guidance=guidance, progress=progress,
                      desc="soft prompt: sampling")  # fmt: skip
    labels, share = judge_images(images, concept, judge)
    return SoftPromptResult(
        "soft_prompt", concept, tuple(soft.readable(free)), embeds, images, seeds, labels, share,
        time.perf_counter() - t0, free, space, soft.nearest_words(free), tuple(losses), loss_before, loss_after,
        target_images,
    )  # fmt: skip
