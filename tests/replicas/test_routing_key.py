"""The routing key is the engine's own prefix-cache block hashes, shortest prefix first (no Ray needed)."""

from __future__ import annotations

from llmserve.engine.block_manager import BlockManager
from llmserve.engine.prefix_cache import PrefixCache, root_hash
from llmserve.engine.request import Request
from llmserve.replicas.routing_key import prefix_hashes
from llmserve.sampling_params import SamplingParams

BS = 4


def _cached_keys(tokens: list[int]) -> set[bytes]:
    """The keys an engine's prefix cache holds after computing `tokens`."""
    cache = PrefixCache(root_hash("model", "float32"))
    manager = BlockManager(16, BS, cache)
    request = Request("r", "r", 0, list(tokens), SamplingParams(), 16, ())
    manager.take_prefix(request, manager.cached_prefix(request))
    manager.allocate(request, request.num_pending_tokens)
    request.num_computed_tokens = request.num_tokens - 1  # the prompt's prefill, before its first token
    manager.cache_full_blocks(request)
    return set(cache._by_hash)


def test_the_key_is_the_hashes_the_prefix_cache_stores():
    tokens = list(range(3, 14))  # two full blocks and 3 more tokens
    hashes = prefix_hashes(root_hash("model", "float32"), tokens, BS)
    assert len(hashes) == 2
    assert set(hashes) == _cached_keys(tokens)


def test_the_block_ending_at_the_last_token_is_left_out():
    root = root_hash("m")
    assert len(prefix_hashes(root, list(range(8)), BS)) == 1  # never cached: its logits must be computed
    assert len(prefix_hashes(root, list(range(9)), BS)) == 2
    assert prefix_hashes(root, [1, 2, 3], BS) == ()


def test_shared_prefixes_share_leading_hashes_and_nothing_after():
    root = root_hash("m")
    a = prefix_hashes(root, [7] * 8 + [1, 2, 3, 4, 5], BS)
    b = prefix_hashes(root, [7] * 8 + [9, 9, 9, 9, 5], BS)
    assert a[:2] == b[:2] and a[2] != b[2]
    assert prefix_hashes(root_hash("other model"), [7] * 9, BS)[0] != prefix_hashes(root, [7] * 9, BS)[0]


def test_at_most_max_blocks():
    assert len(prefix_hashes(root_hash("m"), list(range(1000)), BS, max_blocks=5)) == 5
