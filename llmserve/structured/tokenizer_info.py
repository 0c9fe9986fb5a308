"""Our Tokenizer's vocabulary as xgrammar needs it: each id's token as stored, how tokens spell bytes,
and which ids end a sequence. Mirrors xgrammar's `TokenizerInfo.from_huggingface`, which needs a
transformers tokenizer where we hold a `tokenizers.Tokenizer`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import xgrammar as xgr

if TYPE_CHECKING:
    from llmserve.model.tokenizer import Tokenizer


def tokenizer_info(tokenizer: Tokenizer, vocab_size: int, stop_token_ids: Sequence[int]) -> xgr.TokenizerInfo:
    """`vocab_size` is the model's (the logits' width): ids past the tokenizer's vocabulary (padding)
    become xgrammar special tokens, which every mask refuses."""
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    encoded = [""] * vocab_size
    for token, index in vocab.items():
        if index < vocab_size:  # a tokenizer larger than the model: its extra ids can never be sampled
            encoded[index] = token
    metadata = xgr.TokenizerInfo._detect_metadata_from_hf(tokenizer.backend.to_str())
    # As in from_huggingface: the vocabulary itself is the better evidence of how it spells bytes.
    from_vocab = xgr.TokenizerInfo._detect_vocab_type_from_vocab(vocab)
    vocab_type, add_prefix_space = metadata["vocab_type"], metadata["add_prefix_space"]
    if from_vocab is not None and from_vocab != vocab_type:
        vocab_type = from_vocab
        add_prefix_space = from_vocab == xgr.VocabType.BYTE_FALLBACK and _prepends_space(tokenizer)
    stops = [i for i in stop_token_ids if i < vocab_size] or None  # None: xgrammar looks for one itself
    return xgr.TokenizerInfo(encoded, vocab_type, vocab_size=vocab_size, stop_token_ids=stops,
                             add_prefix_space=add_prefix_space)


def _prepends_space(tokenizer: Tokenizer) -> bool:
    ids = tokenizer.encode("a", add_special_tokens=False)
    return bool(ids) and tokenizer.backend.id_to_token(ids[0]).startswith("\u2581")
