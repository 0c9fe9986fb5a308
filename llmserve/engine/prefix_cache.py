"""Automatic prefix caching: full KV blocks found again by the tokens they and their prefix hold.

A block's key chains a hash of its own tokens onto its parent's key, so one lookup per block
walks a prompt's prefix; the chain's root hashes whatever else shapes the KV (the model and the
dtype). A 128-bit BLAKE2 digest makes collisions improbable, and a hit is still checked against
the block's stored tokens and its parent's key before it is trusted.

The cache only names blocks; the block manager owns them. A cached block whose last user is gone
stays in the manager's free list, ready to be reused by a later request with the same prefix,
until an allocation needs its memory and evicts it.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

BlockHash = bytes


def chain_hash(parent: BlockHash, tokens: Sequence[int]) -> BlockHash:
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(array("q", tokens).tobytes())
    return digest.digest()


def root_hash(*identity: str) -> BlockHash:
    """The chain's root: everything besides the tokens that changes what the KV holds."""
    return hashlib.blake2b("\0".join(identity).encode(), digest_size=16).digest()


@dataclass(frozen=True)
class CachedBlock:
    block_id: int
    parent: BlockHash
    tokens: tuple[int, ...]


@dataclass
class PrefixCacheStats:
    """Cumulative token counts: prompt tokens looked up at admission and those found cached."""

    queries: int = 0
    hits: int = 0
    evictions: int = 0  # blocks whose cached KV was overwritten for new work


class PrefixCache:
    def __init__(self, root: BlockHash) -> None:
        self.root = root
        self._by_hash: dict[BlockHash, CachedBlock] = {}
        self._hash_of: dict[int, BlockHash] = {}  # block id -> its key, for eviction
        self.stats = PrefixCacheStats()

    def lookup(self, parent: BlockHash, key: BlockHash, tokens: Sequence[int]) -> int | None:
        entry = self._by_hash.get(key)
        if entry is None or entry.parent != parent or entry.tokens != tuple(tokens):
            return None
        return entry.block_id

    def insert(self, block_id: int, parent: BlockHash, key: BlockHash, tokens: Sequence[int]) -> bool:
        """Name `block_id` by `key`. False when another block already holds that prefix: two
        requests computed it at once, and the first to finish keeps the name."""
        if key in self._by_hash or block_id in self._hash_of:
            return False
        self._by_hash[key] = CachedBlock(block_id, parent, tuple(tokens))
        self._hash_of[block_id] = key
        return True

    def clear(self) -> None:
        """Forget every name; blocks in use keep their contents but can no longer be found."""
        self._by_hash.clear()
        self._hash_of.clear()

    def holds(self, block_id: int) -> bool:
        return block_id in self._hash_of

    def evict(self, block_id: int) -> None:
        key = self._hash_of.pop(block_id, None)
        if key is not None:
            del self._by_hash[key]
            self.stats.evictions += 1
