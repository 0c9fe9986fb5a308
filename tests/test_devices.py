"""resolve_device: auto, cpu, cuda, cuda:N, with and without GPUs (faked by monkeypatching torch.cuda)."""

from __future__ import annotations

import pytest
import torch

from llmserve.devices import measure_copy_bandwidth, resolve_device


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_and_cpu_resolve_to_the_cpu_without_a_gpu(monkeypatch):
    fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch, name):
    fake_gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match=f"device '{name}' needs CUDA, but this machine has no usable GPU"):
        resolve_device(name)


def test_auto_takes_the_first_gpu_and_cuda_means_cuda_0(monkeypatch):
    fake_gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert str(resolve_device("cuda")) == "cuda:0"


@pytest.mark.parametrize(("count", "message"), [(1, r"has 1 GPU \(cuda:0\)"), (2, r"has 2 GPUs \(cuda:0 to cuda:1\)")])
def test_a_gpu_index_out_of_range_names_how_many_there_are(monkeypatch, count, message):
    fake_gpus(monkeypatch, count)
    with pytest.raises(ValueError, match=message):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "mps", "", "cuda:-1"])
def test_other_names_list_the_accepted_forms(name):
    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def test_copy_bandwidth_is_a_plausible_rate():
    rate = measure_copy_bandwidth("cpu", size_mib=16, trials=2)
    assert 1e8 < rate < 1e13  # bytes/s: above 100 MB/s, below any memory system's 10 TB/s
