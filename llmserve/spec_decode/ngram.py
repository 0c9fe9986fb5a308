"""Prompt-lookup drafting: the tokens that followed the latest earlier occurrence of the context's tail.

For n from prompt_lookup_max down to prompt_lookup_min, the last n tokens of the request (prompt and
output) are looked up in the tokens before them; the longest n that matches wins, and of its matches
the most recent, whose continuation is likeliest to be what the model is copying now. The K tokens
after the match are the drafts (fewer when the context ends first).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def propose_ngram(tokens: np.ndarray, num_drafts: int, lookup_min: int, lookup_max: int) -> list[int]:
    """Up to `num_drafts` draft tokens continuing `tokens` (1-D int array); [] when no n-gram recurs."""
    length = len(tokens)
    if num_drafts < 1:
        return []
    for n in range(min(lookup_max, length - 1), lookup_min - 1, -1):
        pattern = tokens[length - n:]
        # Windows that start before the tail itself, so a match has at least one token after it.
        windows = sliding_window_view(tokens[:length - 1], n)
        hits = np.flatnonzero((windows == pattern).all(axis=1))
        if len(hits) == 0:
            continue
        follow = int(hits[-1]) + n
        return tokens[follow:follow + num_drafts].tolist()
    return []
