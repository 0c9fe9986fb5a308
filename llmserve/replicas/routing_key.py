"""The routing key: a prompt's leading full blocks, hashed as the engines' prefix caches hash them.

Computed once at the front. The router keeps which replica last served each of these hashes, so a
request goes where the longest part of its prefix was computed before: chat turns of one
conversation, or questions under one system prompt, land on the replica whose cache holds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmserve.engine.prefix_cache import BlockHash, chain_hash

# 32 blocks of 16 tokens: enough prefix to tell conversations and system prompts apart, few enough
# hashes (16 bytes each) that sending them with every request costs nothing.
MAX_KEY_BLOCKS = 32


def prefix_hashes(root: BlockHash, token_ids: Sequence[int], block_size: int,
                  max_blocks: int = MAX_KEY_BLOCKS) -> tuple[BlockHash, ...]:
    """The chain hashes of the prompt's first full blocks, shortest prefix first.

    A prompt's last token is never part of a cached block (its KV is computed with the first output
    token), so neither is a block ending there."""
    full = min((len(token_ids) - 1) // block_size, max_blocks)
    hashes: list[BlockHash] = []
    parent = root
    for index in range(full):
        parent = chain_hash(parent, token_ids[index * block_size:(index + 1) * block_size])
        hashes.append(parent)
    return tuple(hashes)


@dataclass
class RouteNote:
    """Travels with a request through the handle: the router reads `prefix` and writes down which
    replica it preferred, so the front can count affinity hits against the replica that answered."""

    prefix: tuple[BlockHash, ...] = ()
    preferred: str | None = None  # the replica that served this prefix before, if the router chose by it
