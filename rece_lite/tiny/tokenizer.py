"""The miniature model's tokenizer: word-level, over the world's vocabulary, with CLIP's special tokens.

Word-level rather than CLIP's BPE so that a learner sees one token per word: a synonym,
an unknown word (``<|unk|>``) and a concept word's position are all visible at a glance.
``AutoTokenizer.from_pretrained`` loads it from a saved pipeline like any other.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from rece_lite.tiny import world

MAX_LENGTH = 16  # tokens per prompt, padding included (SD 1.4: 77)
BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"


def build_tokenizer(max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over :func:`rece_lite.tiny.world.vocabulary`.

    As in SD 1.4, prompts start with BOS, end with EOS and are padded with EOS.

    Args:
        max_length: T, the padded prompt length (``model_max_length``).
    """
    vocab = {BOS: 0, EOS: 1, UNK: 2}
    for w in world.vocabulary():
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 0), (EOS, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=EOS,
        model_max_length=max_length,
    )
