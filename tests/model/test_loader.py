"""Loader paths: dummy weights, missing or misshapen tensors, dtype conversion."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmserve import LLM, SamplingParams
from llmserve.model.loader import load_model
from tests.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3")
    save_tiny_model("qwen3", path)
    return path


def test_dummy_weights_need_only_a_config(tmp_path, folder):
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    llm = LLM(str(tmp_path), load_format="dummy", num_kv_blocks=32, max_model_len=64)
    out = llm.generate({"prompt_token_ids": [3, 4, 5]}, SamplingParams(max_tokens=5, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 5


def test_bfloat16_weights_and_cache(folder):
    loaded = load_model(str(folder), torch.bfloat16, 64)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    llm = LLM(str(folder), dtype="bfloat16", num_kv_blocks=32, max_model_len=64)
    out = llm.generate({"prompt_token_ids": [3, 4, 5]}, SamplingParams(max_tokens=4, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4


def test_missing_tensor_is_named(tmp_path, folder):
    state = load_file(str(folder / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ValueError, match="layers.1.mlp.gate_up_proj"):
        load_model(str(tmp_path), torch.float32, 64)


def test_wrong_shape_is_reported(tmp_path, folder):
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="shape"):
        load_model(str(tmp_path), torch.float32, 64)


def test_corrupt_safetensors_file(tmp_path, folder):
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="cannot read"):
        load_model(str(tmp_path), torch.float32, 64)


def test_unknown_dtype_and_load_format(folder):
    with pytest.raises(ValueError, match="dtype"):
        LLM(str(folder), dtype="float8")
    with pytest.raises(ValueError, match="load_format"):
        LLM(str(folder), load_format="pickle")


def test_auto_dtype_is_bf16_only_where_the_cpu_has_amx(monkeypatch):
    import torch

    from llmserve.model import loader

    monkeypatch.setattr(loader, "cpu_has_amx_bf16", lambda: True)
    assert loader.resolve_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(loader, "cpu_has_amx_bf16", lambda: False)
    assert loader.resolve_dtype("auto") == torch.float32
    assert loader.resolve_dtype("float32") == torch.float32
