"""Incremental detokenization and stop-string handling for streaming.

Each step decodes only a small window of tokens: the tokens behind the last
emitted chunk (`prefix`) plus the new ones. Decoding with that left context
gets inter-token spacing right (SentencePiece drops a leading space when a
token is decoded alone) and keeps each step O(window) instead of O(length).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from llmserve.sampling_params import SamplingParams

# Prompt tokens kept as left context for the first output tokens.
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        self._tokenizer = tokenizer
        self._skip_special = params.skip_special_tokens
        self._stops: list[str] = list(params.stop or [])
        self._include_stop = params.include_stop_str_in_output
        # A stop string spread over tokens may have all but its last char in
        # the text already; holding that many chars means it is never leaked.
        self._hold = max(params.max_stop_len - 1, 0)
        # Window of token ids: [prefix, read) is already in _text, [read, end) is pending.
        self._ids: list[int] = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        self._text = ""  # decoded output text, truncated at a stop string
        self._emitted = 0  # chars of _text handed out by get_next_output_text
        self.matched_stop: str | None = None

    @property
    def output_text(self) -> str:
        """All text emitted so far (the concatenation of the returned deltas)."""
        return self._text[: self._emitted]

    @property
    def stopped(self) -> bool:
        return self.matched_stop is not None

    def update(self, new_token_ids: Sequence[int]) -> str | None:
        """Add generated tokens; return the stop string if one now appears.

        After a stop string matched, further tokens are ignored.
        """
        if self.stopped:
            return None
        self._ids.extend(new_token_ids)
        return self._append(self._decode_pending(flush=False))

    def get_next_output_text(self, finished: bool) -> str:
        """Text that became safe to emit since the previous call.

        With `finished`, everything still held back (stop-string look-behind,
        bytes of an unfinished character) is flushed.
        """
        if finished and not self.stopped:
            self._append(self._decode_pending(flush=True))
        end = len(self._text)
        if not (finished or self.stopped):
            end -= self._hold
        if end <= self._emitted:
            return ""
        delta = self._text[self._emitted : end]
        self._emitted = end
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def _decode_pending(self, flush: bool) -> str:
        """Decode tokens in [read, end) using [prefix, read) as left context."""
        if self._read >= len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        # No new chars (e.g. a skipped special token), or the last token ends
        # mid-character: keep the tokens pending until more arrive.
        if len(full_text) <= len(prefix_text):
            return ""
        if full_text.endswith(_REPLACEMENT_CHAR) and not flush:
            return ""
        delta = full_text[len(prefix_text) :]
        # Slide the window: the newly decoded tokens become the next context.
        self._ids = self._ids[self._read :]
        self._prefix, self._read = 0, len(self._ids)
        return delta

    def _append(self, delta: str) -> str | None:
        if not delta:
            return None
        prev_len = len(self._text)
        self._text += delta
        return self._find_stop(prev_len)

    def _find_stop(self, prev_len: int) -> str | None:
        best: tuple[int, str] | None = None
        for stop in self._stops:
            # Only occurrences ending in the new text are new; older ones
            # were already checked on earlier steps.
            pos = self._text.find(stop, max(0, prev_len - len(stop) + 1))
            if pos != -1 and (best is None or pos < best[0]):
                best = (pos, stop)
        if best is None:
            return None
        pos, stop = best
        self._text = self._text[: pos + len(stop) if self._include_stop else pos]
        self.matched_stop = stop
        return stop
