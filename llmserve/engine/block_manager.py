"""The pool of KV cache blocks: allocation, reference counts, block tables per request."""

from __future__ import annotations

from collections import deque

from llmserve.engine.request import Request


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))

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

    def num_freeable_blocks(self, request: Request) -> int:
        """Blocks that freeing `request` would return to the pool (those no one else holds)."""
        return sum(1 for block in request.block_ids if self.ref_counts[block] == 1)

    def can_allocate(self, request: Request, num_new_tokens: int, reserve: int = 0) -> bool:
        return self.num_new_blocks(request, num_new_tokens) + reserve <= len(self._free)

    def allocate(self, request: Request, num_new_tokens: int) -> None:
        needed = self.num_new_blocks(request, num_new_tokens)
        if needed > len(self._free):
            raise RuntimeError(f"out of KV blocks: need {needed}, have {len(self._free)}")
        for _ in range(needed):
            block = self._free.popleft()
            self.ref_counts[block] = 1
            request.block_ids.append(block)

    def free(self, request: Request) -> None:
        # Reversed so a request's tail blocks are reused first and its head stays intact longest.
        for block in reversed(request.block_ids):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self._free.append(block)
        request.block_ids = []
