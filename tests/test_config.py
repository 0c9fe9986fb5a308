"""EngineConfig's device plumbing: the device is stored resolved, and settings left at None take
the device's defaults (today's on CPU). CUDA is faked: no engine is built here."""

from __future__ import annotations

import dataclasses

import pytest

from llmserve.config import CPU_DEFAULTS, CUDA_DEFAULTS, CacheConfig, EngineConfig
from tests.test_devices import fake_gpus


def test_cpu_defaults_are_unchanged(monkeypatch):
    fake_gpus(monkeypatch, 0)
    config = EngineConfig.create()
    assert config.device == "cpu"
    assert config.cache.kv_cache_memory == 2 << 30
    assert config.scheduler.max_num_seqs == 64 and config.scheduler.max_num_batched_tokens == 512
    assert config.cache.gpu_memory_utilization == 0.9
    assert config.enforce_eager is False and config.backend == "auto"
    # The flat form and the records' own defaults agree on CPU.
    assert config.cache == CacheConfig() and config.scheduler == type(config.scheduler)()
    assert dataclasses.replace(config, quant=EngineConfig().quant) == EngineConfig(dtype="auto")


def test_cuda_defaults(monkeypatch):
    fake_gpus(monkeypatch, 1)
    for device in ("auto", "cuda", "cuda:0"):
        config = EngineConfig.create(device=device)
        assert config.device == "cuda:0"
        assert config.cache.kv_cache_memory is None  # sized from the GPU's memory
        assert config.scheduler.max_num_seqs == CUDA_DEFAULTS.max_num_seqs == 256
        assert config.scheduler.max_num_batched_tokens == CUDA_DEFAULTS.max_num_batched_tokens == 8192


def test_explicit_settings_win_on_either_device(monkeypatch):
    fake_gpus(monkeypatch, 1)
    for device in ("cpu", "cuda"):
        config = EngineConfig.create(device=device, kv_cache_memory="1GiB", max_num_seqs=8, max_num_batched_tokens=99,
                                     gpu_memory_utilization=0.5, enforce_eager=True, backend="torch")
        assert config.cache.kv_cache_memory == 1 << 30
        assert (config.scheduler.max_num_seqs, config.scheduler.max_num_batched_tokens) == (8, 99)
        assert config.cache.gpu_memory_utilization == 0.5
        assert config.enforce_eager and config.backend == "torch"
    assert EngineConfig.create(device="cpu").cache.kv_cache_memory == CPU_DEFAULTS.kv_cache_memory


def test_the_device_is_stored_resolved(monkeypatch):
    fake_gpus(monkeypatch, 0)
    assert EngineConfig().device == "cpu"
    assert EngineConfig(device="auto").device == "cpu"
    fake_gpus(monkeypatch, 2)
    assert EngineConfig().device == "cuda:0"
    assert EngineConfig(device="cuda:1").device == "cuda:1"
    assert dataclasses.replace(EngineConfig(device="cuda:1"), seed=3).device == "cuda:1"


def test_cuda_without_a_gpu_fails_in_create(monkeypatch):
    fake_gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match="needs CUDA"):
        EngineConfig.create(device="cuda")


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.01, 2, True, "0.5"])
def test_gpu_memory_utilization_must_be_a_fraction(fraction):
    with pytest.raises(ValueError, match="gpu_memory_utilization must be a fraction in"):
        CacheConfig(gpu_memory_utilization=fraction)


def test_gpu_memory_utilization_of_one_is_allowed():
    assert CacheConfig(gpu_memory_utilization=1).gpu_memory_utilization == 1


def test_backends_are_checked(monkeypatch):
    fake_gpus(monkeypatch, 1)
    with pytest.raises(ValueError, match="unknown backend 'triton'; choose from auto, cpu, torch, cuda"):
        EngineConfig.create(backend="triton")
    assert EngineConfig.create(device="cuda", backend="torch").backend == "torch"
    assert EngineConfig.create(device="cpu", backend="cpu").backend == "cpu"


def test_an_unsized_pool_needs_a_gpu(monkeypatch):
    fake_gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match="kv_cache_memory is needed on CPU"):
        EngineConfig(cache=CacheConfig(kv_cache_memory=None))
    assert EngineConfig(cache=CacheConfig(kv_cache_memory=None, num_blocks=4)).cache.num_blocks == 4
