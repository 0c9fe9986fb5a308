"""Native memory upkeep: the oneDNN cache cap and periodic malloc_trim."""

from __future__ import annotations

import os

from llmserve.engine.native_memory import MallocTrimmer, _malloc_trim, cap_onednn_primitive_cache


def test_trims_at_most_once_per_interval():
    now = [100.0]
    calls: list[int] = []
    trimmer = MallocTrimmer(interval=10.0, clock=lambda: now[0], trim=lambda pad: calls.append(pad) or 1)
    assert trimmer.maybe_trim()  # the first call trims
    now[0] += 9.9
    assert not trimmer.maybe_trim()
    now[0] += 0.2
    assert trimmer.maybe_trim()
    assert calls == [0, 0]


def test_without_glibc_it_does_nothing():
    assert not MallocTrimmer(trim=None).maybe_trim()


def test_real_malloc_trim_runs_where_glibc_has_it():
    trim = _malloc_trim()
    if trim is not None:
        assert trim(0) in (0, 1)


def test_the_cache_cap_keeps_a_value_the_user_set(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    cap_onednn_primitive_cache(16)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "16"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    cap_onednn_primitive_cache(16)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"
