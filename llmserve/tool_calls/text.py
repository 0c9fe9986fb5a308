"""Helpers over plain text shared by the parsers."""

from __future__ import annotations


def held_back(text: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could be the start of a marker, and so must not be
    sent as content yet: the next token may complete `<tool_call>` out of `<tool`."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if marker.startswith(text[-size:]):
                longest = size
                break
    return longest
