"""Bad input raises a clear error and leaves the engine healthy with every KV block free."""

from __future__ import annotations

import pytest

from llmserve import LLM, SamplingParams
from tests.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen2")
    save_tiny_model("qwen2", path)
    return LLM(str(path), num_kv_blocks=64, block_size=4, max_model_len=64)


def _healthy(llm: LLM) -> None:
    assert llm.engine.block_manager.num_free_blocks == 64
    assert not llm.engine.has_unfinished_requests()
    out = llm.generate({"prompt_token_ids": [4, 5, 6]}, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 3


@pytest.mark.parametrize("prompt, message", [
    ({"prompt_token_ids": list(range(3, 70))}, "context length"),
    ({"prompt_token_ids": []}, "empty"),
    ({"prompt_token_ids": [1, 999999]}, "token ids"),
    ("text prompt", "no tokenizer"),
    ({"nothing": 1}, "prompt"),
])
def test_bad_prompts_raise_clear_errors(llm, prompt, message):
    with pytest.raises(ValueError, match=message):
        llm.generate([{"prompt_token_ids": [3, 4]}, prompt], SamplingParams(max_tokens=2))
    _healthy(llm)


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": -1}, "max_tokens"), ({"n": 0}, "n"), ({"top_k": -5}, "top_k"),
    ({"logprobs": -1}, "logprobs"), ({"min_p": 2.0}, "min_p"),
])
def test_invalid_sampling_values_are_rejected(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_abort_mid_generation_frees_every_block(llm):
    engine = llm.engine
    for i in range(4):
        engine.add_request(f"a{i}", [3 + i] * 20, SamplingParams(max_tokens=30, ignore_eos=True))
    for _ in range(5):
        engine.step()
    assert engine.block_manager.num_free_blocks < 64
    for i in range(4):
        out = engine.abort_request(f"a{i}")
        assert out.finished and out.outputs[0].finish_reason == "abort"
    _healthy(llm)


def test_failure_inside_a_step_fails_only_those_requests(llm, monkeypatch):
    engine = llm.engine
    original = engine.runner.execute

    def broken(scheduled):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(engine.runner, "execute", broken)
    with pytest.raises(RuntimeError, match="simulated kernel failure"):
        llm.generate({"prompt_token_ids": [3, 4, 5]}, SamplingParams(max_tokens=4))
    monkeypatch.setattr(engine.runner, "execute", original)
    _healthy(llm)


def test_failure_while_updating_one_request_spares_its_batch_mates(llm, monkeypatch):
    engine = llm.engine
    original = engine._stop_status

    def flaky(request, token_id):
        if 77 in request.prompt_token_ids:
            raise RuntimeError("simulated detokenizer failure")
        return original(request, token_id)

    monkeypatch.setattr(engine, "_stop_status", flaky)
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, n=2)
    engine.add_request("bad", {"prompt_token_ids": [3, 77, 5]}, params)
    engine.add_request("good", {"prompt_token_ids": [3, 4, 5]}, params)
    finals = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
    assert "simulated detokenizer failure" in finals["bad"].error
    assert finals["good"].error is None
    assert [len(o.token_ids) for o in finals["good"].outputs] == [5, 5]
    monkeypatch.undo()
    _healthy(llm)


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        LLM(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        LLM(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        LLM(str(tmp_path))


def test_unknown_architecture_names_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "vocab_size": 10, '
                                          '"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, '
                                          '"num_attention_heads": 2}')
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        LLM(str(tmp_path), load_format="dummy")


@pytest.mark.parametrize("prompt", [{"prompt_token_ids": [1.7, 2.2]}, {"prompt_token_ids": [True, 3]},
                                    {"prompt_token_ids": [None]}, {"prompt_token_ids": 5},
                                    {"prompt_token_ids": [[1, 2]]}])
def test_malformed_token_ids_are_value_errors(llm, prompt):
    with pytest.raises(ValueError, match="integers"):
        llm.generate(prompt, SamplingParams(max_tokens=2))
    _healthy(llm)


def test_request_longer_than_the_pool_finishes_instead_of_preempting_itself(tmp_path):
    save_tiny_model("llama", tmp_path)
    small = LLM(str(tmp_path), num_kv_blocks=4, block_size=4, max_model_len=256)
    out = small.generate({"prompt_token_ids": [3, 4, 5, 6, 7]}, SamplingParams(max_tokens=30, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 11 and out[0].outputs[0].finish_reason == "length"
    with pytest.raises(ValueError, match="KV cache holds 16"):
        small.generate([{"prompt_token_ids": [3, 4]}, {"prompt_token_ids": list(range(3, 23))}])
    assert not small.engine.has_unfinished_requests()


@pytest.mark.parametrize("kwargs, name", [({"max_num_batched_tokens": 0}, "max_num_batched_tokens"),
                                          ({"max_num_seqs": 0}, "max_num_seqs"), ({"block_size": 0}, "block_size"),
                                          ({"num_kv_blocks": 0}, "num_kv_blocks"),
                                          ({"max_model_len": 0}, "max_model_len")])
def test_zero_sizes_in_the_config_are_rejected(tmp_path, kwargs, name):
    save_tiny_model("llama", tmp_path)
    with pytest.raises(ValueError, match=name):
        LLM(str(tmp_path), **kwargs)
