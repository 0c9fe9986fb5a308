"""Prompt lookup proposes what followed the longest, latest earlier occurrence of the context's tail."""

from __future__ import annotations

import numpy as np
import pytest

from llmserve.spec_decode.config import SpeculativeConfig
from llmserve.spec_decode.ngram import propose_ngram


def _propose(tokens: list[int], k: int = 3, lo: int = 1, hi: int = 3) -> list[int]:
    return propose_ngram(np.array(tokens, dtype=np.int64), k, lo, hi)


def test_the_longest_match_wins_over_a_later_shorter_one():
    # Tail (1, 2, 3): its 3-gram occurs at the start; the later "3" alone is followed by 9.
    assert _propose([1, 2, 3, 4, 5, 6, 3, 9, 1, 2, 3]) == [4, 5, 6]


def test_the_latest_occurrence_of_equal_length_wins():
    assert _propose([7, 8, 1, 7, 8, 2, 7, 8], hi=2) == [2, 7, 8]


def test_drafts_stop_at_the_end_of_the_context_and_at_k():
    assert _propose([5, 6, 5], k=4) == [6, 5]
    assert _propose([1, 2, 3, 4, 5, 6, 1], k=2) == [2, 3]


def test_no_draft_without_a_match_of_at_least_the_minimum():
    assert _propose([1, 2, 3, 4], lo=1) == []
    assert _propose([1, 2, 9, 2], lo=2) == []
    assert _propose([3]) == []
    assert _propose([1, 2, 1], k=0) == []


def test_config_follows_vllm_names_and_checks_values():
    config = SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 3})
    assert (config.num_speculative_tokens, config.prompt_lookup_max, config.prompt_lookup_min) == (5, 3, 2)
    assert SpeculativeConfig.from_dict({"method": "ngram", "prompt_lookup_min": 6}).prompt_lookup_max == 6
    assert SpeculativeConfig.from_dict(None) is None
    for bad in ({"method": "eagle"}, {"method": "ngram", "num_speculative_tokens": 0},
                {"method": "ngram", "prompt_lookup_min": 3, "prompt_lookup_max": 2}, {"method": "ngram", "k": 1}):
        with pytest.raises(ValueError):
            SpeculativeConfig.from_dict(bad)
