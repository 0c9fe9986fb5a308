"""The block pool with a prefix cache: hits, the last token, verification, LRU eviction, ref counts."""

from __future__ import annotations

from llmserve.engine.block_manager import BlockManager
from llmserve.engine.prefix_cache import PrefixCache, chain_hash, root_hash
from llmserve.engine.request import Request
from llmserve.sampling_params import SamplingParams

BS = 4


def _manager(num_blocks: int = 16) -> BlockManager:
    return BlockManager(num_blocks, BS, PrefixCache(root_hash("model", "float32")))


def _request(tokens: list[int], name: str = "r") -> Request:
    return Request(name, name, 0, list(tokens), SamplingParams(), 16, ())


def _run(manager: BlockManager, request: Request) -> list[int]:
    """Admit on the cached prefix, compute the rest, name the full blocks; returns the hit blocks."""
    cached = manager.cached_prefix(request)
    manager.take_prefix(request, cached)
    manager.allocate(request, request.num_pending_tokens)
    request.num_computed_tokens = request.num_tokens
    manager.cache_full_blocks(request)
    return cached


def test_chain_hash_depends_on_everything_before():
    root = root_hash("m")
    assert chain_hash(root, [1, 2]) == chain_hash(root, [1, 2])
    assert chain_hash(root, [1, 2]) != chain_hash(root, [2, 1])
    assert chain_hash(chain_hash(root, [9]), [1, 2]) != chain_hash(chain_hash(root, [8]), [1, 2])
    assert chain_hash(root_hash("m", "float32"), [1]) != chain_hash(root_hash("m", "bfloat16"), [1])


def test_a_request_hits_after_its_prefix_owner_finished():
    manager = _manager()
    owner = _request(list(range(10)))  # two full blocks and a partial one
    assert _run(manager, owner) == []
    owner_full_blocks = owner.block_ids[:2]
    manager.free(owner)
    assert manager.num_free_blocks == 16
    follower = _request(list(range(8)) + [50, 51, 52])
    assert _run(manager, follower) == owner_full_blocks
    assert follower.num_cached_tokens == 8 and follower.num_computed_tokens == 11
    assert manager.prefix_cache.stats.hits == 8
    assert manager.prefix_cache.stats.queries == 10 + 11
    stranger = _request([1] + list(range(1, 11)))
    assert _run(manager, stranger) == []


def test_the_last_token_is_always_computed():
    manager = _manager()
    first = _request(list(range(8)))  # exactly two blocks
    _run(manager, first)
    manager.free(first)
    same = _request(list(range(8)))
    assert len(manager.cached_prefix(same)) == 1  # the block holding token 8 is recomputed
    longer = _request(list(range(9)))
    assert len(manager.cached_prefix(longer)) == 2


def test_a_hit_is_checked_against_the_stored_tokens():
    manager = _manager()
    cache = manager.prefix_cache
    victim = _request([1, 2, 3, 4, 5])
    key = chain_hash(cache.root, [1, 2, 3, 4])
    # A forged entry under the right key with other tokens, as a hash collision would leave it.
    assert cache.insert(7, cache.root, key, [9, 9, 9, 9])
    assert manager.cached_prefix(victim) == []
    assert cache.lookup(cache.root, key, [9, 9, 9, 9]) == 7
    assert cache.lookup(root_hash("other"), key, [9, 9, 9, 9]) is None  # the parent is checked too


def test_unnamed_blocks_are_reused_before_cached_ones_and_cached_ones_least_recent_first():
    manager = _manager(num_blocks=6)
    old = _request([1] * 8 + [0], "old")  # 2 named blocks + 1 partial
    new = _request([2] * 8 + [0], "new")
    _run(manager, old)
    _run(manager, new)
    old_named, new_named = old.block_ids[:2], new.block_ids[:2]
    manager.free(old)
    manager.free(new)
    grab = _request([3] * 8)
    manager.allocate(grab, 8)  # takes the two unnamed partial blocks first: nothing evicted
    assert manager.prefix_cache.stats.evictions == 0
    assert len(manager.cached_prefix(_request([1] * 8 + [0]))) == 2
    manager.allocate(grab, 12)  # one more block: the least recently freed, old's tail block
    assert grab.block_ids[-1] == old_named[1]
    assert manager.prefix_cache.stats.evictions == 1
    assert len(manager.cached_prefix(_request([1] * 8 + [0]))) == 1
    assert len(manager.cached_prefix(_request([2] * 8 + [0]))) == 2
    manager.allocate(grab, 24)
    assert grab.block_ids[-3:] == [old_named[0], new_named[1], new_named[0]]
    assert manager.cached_prefix(_request([2] * 8 + [0])) == []


def test_after_a_reset_the_blocks_that_were_named_are_reused_before_never_touched_ones():
    manager = _manager(num_blocks=16)
    first = _request(list(range(8)) + [0], "first")  # 2 named blocks + 1 partial
    _run(manager, first)
    used = list(first.block_ids)
    manager.free(first)
    manager.reset_prefix_cache()
    assert manager.cached_prefix(_request(list(range(8)) + [0])) == []
    again = _request([5] * 12, "again")
    manager.allocate(again, 12)
    assert sorted(again.block_ids) == sorted(used)  # not blocks 3, 4, 5, which were never written
    assert manager.prefix_cache.stats.evictions == 0  # the reset dropped the names, nothing to evict


def test_taking_a_cached_block_makes_it_lru_again():
    manager = _manager(num_blocks=4)
    a, b = _request([1] * 4 + [0], "a"), _request([2] * 4 + [0], "b")
    _run(manager, a)
    _run(manager, b)
    manager.free(a)
    manager.free(b)
    again = _request([1] * 4 + [7], "again")
    _run(manager, again)  # a's block is used again, then freed after b's
    manager.free(again)
    grab = _request([3] * 16)
    manager.allocate(grab, 12)  # 2 unnamed partial blocks, then b's block (older than a's reuse)
    assert manager.cached_prefix(_request([2] * 4 + [0])) == []
    assert len(manager.cached_prefix(_request([1] * 4 + [0]))) == 1


def test_shared_blocks_are_ref_counted_and_never_evicted():
    manager = _manager(num_blocks=8)
    owner = _request(list(range(9)), "owner")
    _run(manager, owner)
    sharer = _request(list(range(8)) + [40, 41], "sharer")
    shared = _run(manager, sharer)
    assert shared == owner.block_ids[:2]
    assert [manager.ref_counts[b] for b in shared] == [2, 2]
    manager.free(owner)  # the owner finishes or is aborted: the sharer keeps the blocks
    assert [manager.ref_counts[b] for b in shared] == [1, 1]
    free_before = manager.num_free_blocks
    hog = _request([5] * (free_before * BS), "hog")
    manager.allocate(hog, free_before * BS)  # the whole free list, evicting everything in it
    assert not set(hog.block_ids) & set(shared)
    assert manager.num_free_blocks == 0
    assert len(manager.cached_prefix(_request(list(range(8)) + [1]))) == 2  # still named, still in use
    manager.free(hog)
    manager.free(sharer)
    assert manager.num_free_blocks == 8 and all(count == 0 for count in manager.ref_counts)


def test_blocks_to_admit_counts_cached_blocks_taken_from_the_free_list():
    manager = _manager(num_blocks=8)
    owner = _request(list(range(9)), "owner")
    _run(manager, owner)
    follower = _request(list(range(8)) + [40, 41, 42], "f")
    cached = manager.cached_prefix(follower)
    assert manager.blocks_to_admit(follower, cached, 3) == 1  # shared blocks are in use: no cost
    manager.free(owner)
    assert manager.blocks_to_admit(follower, cached, 3) == 3  # now both come out of the free list
    free = manager.num_free_blocks
    manager.take_prefix(follower, cached)
    manager.allocate(follower, 3)
    assert manager.num_free_blocks == free - 3


def test_without_a_prefix_cache_nothing_is_shared():
    manager = BlockManager(8, BS)
    first = _request(list(range(9)))
    _run(manager, first)
    manager.free(first)
    assert manager.cached_prefix(_request(list(range(9)))) == []
