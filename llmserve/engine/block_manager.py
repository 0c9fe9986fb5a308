"""The pool of KV cache blocks: allocation, reference counts, block tables per request.

With a prefix cache, full blocks are named by their tokens' hash chain once computed, and freed
blocks keep their contents: the free list hands out unnamed blocks first, then named ones least
recently used first, evicting each name only when its block is reused. Blocks shared by running
requests have a reference count above zero and are never in the free list, so never evicted.
"""

from __future__ import annotations

from collections import OrderedDict

from llmserve.engine.prefix_cache import PrefixCache, chain_hash
from llmserve.engine.request import Request


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_cache: PrefixCache | None = None) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.prefix_cache = prefix_cache
        # Front: reused next. Unnamed blocks go to the front, named ones to the back (LRU order).
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def num_new_blocks(self, request: Request, num_new_tokens: int) -> int:
        total = self.blocks_needed(request.num_computed_tokens + num_new_tokens)
        return max(0, total - len(request.block_ids))

    def num_freeable_blocks(self, request: Request, keep: frozenset[int] = frozenset()) -> int:
        """Blocks that freeing `request` would return to the pool (those no one else holds),
        not counting `keep`, blocks about to be taken again."""
        return sum(1 for block in request.block_ids if self.ref_counts[block] == 1 and block not in keep)

    def can_allocate(self, request: Request, num_new_tokens: int) -> bool:
        return self.num_new_blocks(request, num_new_tokens) <= len(self._free)

    def allocate(self, request: Request, num_new_tokens: int) -> None:
        needed = self.num_new_blocks(request, num_new_tokens)
        if needed > len(self._free):
            raise RuntimeError(f"out of KV blocks: need {needed}, have {len(self._free)}")
        for _ in range(needed):
            block, _ = self._free.popitem(last=False)
            if self.prefix_cache is not None:
                self.prefix_cache.evict(block)
            self.ref_counts[block] = 1
            request.block_ids.append(block)

    def free(self, request: Request) -> None:
        # Reversed so a request's tail blocks are reused first and its head stays cached longest.
        for block in reversed(request.block_ids):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self._free[block] = None
                if self.prefix_cache is None or not self.prefix_cache.holds(block):
                    self._free.move_to_end(block, last=False)
        request.block_ids = []
        request.num_committed_blocks = 0

    # --- prefix caching ------------------------------------------------------------------
    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix. The free blocks that held one are unnamed now, so they move
        to the front like any unnamed block, most recently freed first: reusing them before
        never-touched blocks keeps the pool's memory warm (on CPU a never-touched block costs
        page faults on first write)."""
        cache = self.prefix_cache
        if cache is None:
            return
        named_free = [block for block in self._free if cache.holds(block)]
        cache.clear()
        for block in named_free:
            self._free.move_to_end(block, last=False)

    def cached_prefix(self, request: Request) -> list[int]:
        """Blocks that already hold a prefix of a request's tokens, to be taken at admission.

        Never the block with the last token: its logits are needed, so it is always computed.
        """
        cache = self.prefix_cache
        if cache is None or request.block_ids:
            return []
        full_blocks = (request.num_tokens - 1) // self.block_size
        hashes = self._block_hashes(request, full_blocks)
        blocks: list[int] = []
        parent = cache.root
        for index in range(full_blocks):
            key = hashes[index]
            block = cache.lookup(parent, key, self._block_tokens(request, index))
            if block is None:
                break
            blocks.append(block)
            parent = key
        return blocks

    def blocks_to_admit(self, request: Request, cached: list[int], num_new_tokens: int) -> int:
        """Free blocks that admitting `request` on `cached` with `num_new_tokens` would use up:
        new blocks, plus cached ones that sit in the free list."""
        total = self.blocks_needed(len(cached) * self.block_size + num_new_tokens)
        return total - len(cached) + sum(1 for block in cached if self.ref_counts[block] == 0)

    def take_prefix(self, request: Request, cached: list[int]) -> None:
        """Give a request with no blocks the cached blocks of its prefix; they count as computed."""
        for block in cached:
            if self.ref_counts[block] == 0:
                del self._free[block]
            self.ref_counts[block] += 1
        request.block_ids = list(cached)
        request.num_committed_blocks = len(cached)
        request.num_computed_tokens = len(cached) * self.block_size
        if self.prefix_cache is not None and not request.needs_prompt_states:  # those skip the lookup
            stats = self.prefix_cache.stats
            stats.queries += request.num_tokens
            stats.hits += request.num_computed_tokens
        if request.num_cached_tokens is None:
            request.num_cached_tokens = request.num_computed_tokens

    def cache_full_blocks(self, request: Request) -> None:
        """Name the request's blocks that its computed tokens have filled since the last call."""
        cache = self.prefix_cache
        if cache is None:
            return
        full_blocks = request.num_computed_tokens // self.block_size
        if full_blocks <= request.num_committed_blocks:
            return
        hashes = self._block_hashes(request, full_blocks)
        for index in range(request.num_committed_blocks, full_blocks):
            parent = hashes[index - 1] if index else cache.root
            cache.insert(request.block_ids[index], parent, hashes[index], self._block_tokens(request, index))
        request.num_committed_blocks = full_blocks

    def _block_hashes(self, request: Request, num_blocks: int) -> list[bytes]:
        """The hash chain of the request's first `num_blocks` full blocks, extended as needed."""
        hashes = request.block_hashes
        parent = hashes[-1] if hashes else self.prefix_cache.root
        for index in range(len(hashes), num_blocks):
            parent = chain_hash(parent, self._block_tokens(request, index))
            hashes.append(parent)
        return hashes

    def _block_tokens(self, request: Request, index: int) -> list[int]:
        return request.token_slice(index * self.block_size, (index + 1) * self.block_size)
