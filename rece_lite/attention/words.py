"""From words to token positions: which rows of the attention maps belong to a word of the prompt.

The text encoder sees ``T`` tokens (SD 1.x: 77; the miniature model: 16): a start token,
the prompt's tokens, an end token and padding.  CLIP's BPE tokenizer can split one word
into several tokens ("rococo" -> "roc", "oco</w>"); the miniature model's tokenizer is
word-level.  :func:`word_spans` handles both by tokenizing the word on its own and looking
for its token ids among the prompt's.
"""

from __future__ import annotations


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The T token ids the text encoder sees for ``prompt`` (padding included)."""
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids


def prompt_tokens(tokenizer, prompt: str) -> list[str]:
    """The T token strings the text encoder sees for ``prompt`` (padding included)."""
    return [t.removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(_prompt_ids(tokenizer, prompt))]


def word_spans(tokenizer, prompt: str, word: str) -> list[range]:
    """Where ``word`` sits among ``prompt``'s T tokens: one range of positions per occurrence.

    The word (or phrase) is tokenized on its own and its ids are looked for in the
    prompt's ids.  Matching ids rather than strings keeps word ends: CLIP marks a word's
    last piece with ``</w>``, so "red" does not match the start of "reddish".

    Args:
        tokenizer: the pipeline's tokenizer (``pipe.tokenizer``).
        prompt: the prompt, as given to the pipeline.
        word: a word or phrase of it, e.g. ``"red"``, ``"rococo"``, ``"red circle"``.

    Returns:
        The occurrences in prompt order, e.g. ``[range(2, 3), range(6, 7)]`` for "red" in
        "a red circle and a red square" with a word-level tokenizer.

    Raises:
        ValueError: the word is empty, unknown to the tokenizer, or not in the prompt.
    """
    if not isinstance(word, str) or not word.strip():
        raise ValueError(f"word must be a word or phrase of the prompt, got {word!r}")
    want = tokenizer(word, add_special_tokens=False).input_ids
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in want:
        raise ValueError(
            f"the tokenizer does not know {word!r} (it becomes {tokenizer.unk_token!r}): pick a word of its vocabulary"
        )
    ids = _prompt_ids(tokenizer, prompt)
    n = len(want)
    spans = [range(i, i + n) for i in range(len(ids) - n + 1) if ids[i : i + n] == want]
    if not spans:
        raise ValueError(f"{word!r} is not in the prompt {prompt!r}, whose tokens are {tokenizer.tokenize(prompt)}")
    return spans
