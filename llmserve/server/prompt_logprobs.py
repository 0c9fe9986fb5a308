"""Prompt logprobs in vLLM's wire shape, and the legacy completions `logprobs` object they share with echo.

vLLM's `prompt_logprobs` is a list with one entry per prompt token: null for the first (nothing
predicts it), then `{"<token id>": {"logprob", "rank", "decoded_token"}}` holding the prompt's own
token first and the top-k alternatives after it (so k or k + 1 entries).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmserve.engine.outputs import RequestOutput, TokenLogprobs

# vLLM's floor: JSON has no -Infinity, and a token the model rules out entirely would otherwise have one.
LOGPROB_FLOOR = -9999.0
TokenText = Callable[[int], str]


def floor(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


def prompt_entries(output: RequestOutput) -> list[TokenLogprobs | None]:
    """The output's prompt logprobs, which the engine sets once the prompt is computed."""
    if output.prompt_logprobs is None:
        raise RuntimeError(f"request {output.request_id} came back without its prompt logprobs")
    return output.prompt_logprobs


def vllm_prompt_logprobs(entries: Sequence[TokenLogprobs | None], token_text: TokenText) -> list[dict | None]:
    """`RequestOutput.prompt_logprobs` as vLLM's responses carry it."""
    return [None if entry is None else _ranked(entry, token_text) for entry in entries]


def _ranked(entry: TokenLogprobs, token_text: TokenText) -> dict[str, dict[str, Any]]:
    ranked = {str(entry.token_id): _logprob(entry.logprob, entry.rank, token_text(entry.token_id))}
    for rank, (token_id, logprob) in enumerate(entry.top, start=1):
        ranked.setdefault(str(token_id), _logprob(logprob, rank, token_text(token_id)))
    return ranked


def _logprob(logprob: float, rank: int, decoded: str) -> dict[str, Any]:
    return {"logprob": floor(logprob), "rank": rank, "decoded_token": decoded}


def completion_logprobs(tokens: Sequence[tuple[int, TokenLogprobs | None]], num_top: int, token_text: TokenText,
                        offset: int = 0) -> dict[str, Any]:
    """OpenAI's legacy `logprobs` object for (token id, its logprobs) pairs; None marks a token nothing
    predicts (an echoed prompt's first), which gets null as vLLM gives it. `offset` is the character
    where the first token starts in the choice's text: a stream's chunks continue where the last ended."""
    texts, logprobs, tops, offsets = [], [], [], []
    for token_id, entry in tokens:
        text = token_text(token_id)
        texts.append(text)
        offsets.append(offset)
        offset += len(text)
        logprobs.append(None if entry is None else floor(entry.logprob))
        # An echoed prompt's entries may hold more alternatives (prompt_logprobs > logprobs): cut to logprobs.
        tops.append(None if entry is None else {token_text(t): floor(lp) for t, lp in entry.top[:num_top]})
    return {"tokens": texts, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}
