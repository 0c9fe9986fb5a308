"""Quantizing whole models: they still generate, skipped modules stay exact, saved folders reload the same."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from llmserve import LLM, SamplingParams
from llmserve.cli import main
from llmserve.model.layers import Embedding, Linear, MergedLinear
from llmserve.model.loader import load_model
from llmserve.quant.apply import weights_nbytes
from llmserve.quant.config import QuantConfig
from llmserve.quant.int4 import Int4Linear
from llmserve.quant.int8 import Int8Embedding, Int8Linear
from tests.engine_helpers import paged_logits
from tests.tiny_models import save_tiny_chat_model, save_tiny_model

PROMPTS = [[5, 17, 42, 9, 100, 3, 77], [8, 1, 200, 31, 64]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2")
    save_tiny_model("smollm2", folder)  # tied embeddings, like the embedded model
    return folder


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2")
    save_tiny_model("qwen2", folder)  # untied head and qkv bias
    return folder


def _logits(folder, quant: QuantConfig, dtype=torch.float32) -> list[torch.Tensor]:
    return paged_logits(load_model(str(folder), dtype, 512, quant=quant), PROMPTS)


def _agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    a_top, b_top = torch.cat([x.argmax(-1) for x in a]), torch.cat([x.argmax(-1) for x in b])
    return float((a_top == b_top).float().mean())


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("arch", ["tiny", "qwen2"])
def test_a_weight_only_model_computes_with_exactly_its_dequantized_weights(method, arch, request):
    folder = request.getfixturevalue(arch)
    quantized = load_model(str(folder), torch.float32, 512, quant=QuantConfig(method))
    reference = load_model(str(folder), torch.float32, 512)
    with torch.no_grad():
        for name in quantized.quant_specs:
            target = reference.model.get_submodule(name)
            target.weight.copy_(quantized.model.get_submodule(name).dequantize())
    for q, r in zip(paged_logits(quantized, PROMPTS), paged_logits(reference, PROMPTS), strict=True):
        assert float((q - r).norm() / r.norm()) < 0.02  # the kernels round activations to bf16, nothing else


@pytest.mark.parametrize("method", ["int8", "int4", "w8a8"])
@pytest.mark.parametrize("arch", ["tiny", "qwen2"])
def test_quantized_models_stay_near_full_precision_and_generate(method, arch, request):
    folder = request.getfixturevalue(arch)
    reference = _logits(folder, QuantConfig())
    quantized = _logits(folder, QuantConfig(method))
    error = max(float((q - r).norm() / r.norm()) for q, r in zip(quantized, reference, strict=True))
    # Tiny random models are harsh on 4 bits (wide weights, flat logits); the real model is measured by `eval`.
    assert error < {"int8": 0.05, "w8a8": 0.05, "int4": 0.5}[method]
    assert _agreement(quantized, reference) >= {"int4": 0.4}.get(method, 0.9)
    llm = LLM(str(folder), dtype="bfloat16", quantization=method, num_kv_blocks=64, max_model_len=512)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                           SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    assert [len(o.outputs[0].token_ids) for o in outputs] == [16, 16]


def test_quantization_swaps_every_linear_and_the_tied_embedding(tiny):
    loaded = load_model(str(tiny), torch.float32, 512, quant=QuantConfig("int4", group_size=32))
    model = loaded.model
    assert not [n for n, m in model.named_modules() if isinstance(m, Linear | MergedLinear | Embedding)]
    assert isinstance(model.layers[0].mlp.gate_up_proj, Int4Linear)
    assert isinstance(model.embed_tokens, Int8Embedding)  # the tied head: int8 even under int4
    assert loaded.quant_specs["layers.1.mlp.down_proj"] == {"kind": "int4", "group_size": 32}
    full = weights_nbytes(load_model(str(tiny), torch.float32, 512).model)
    assert weights_nbytes(model) < 0.3 * full


def test_w8a8_leaves_the_vocabulary_projection_in_the_model_dtype(tiny, qwen2):
    tied = load_model(str(tiny), torch.bfloat16, 512, quant=QuantConfig("w8a8")).model
    assert isinstance(tied.embed_tokens, Embedding) and tied.embed_tokens.weight.dtype == torch.bfloat16
    assert tied.layers[0].mlp.down_proj.dynamic
    untied = load_model(str(qwen2), torch.bfloat16, 512, quant=QuantConfig("w8a8")).model
    assert isinstance(untied.lm_head, Linear) and isinstance(untied.embed_tokens, Int8Embedding)


@pytest.mark.parametrize("method", ["int8", "int4", "w8a8"])
@pytest.mark.parametrize("arch", ["tiny", "qwen2"])
def test_every_quantized_vocabulary_projection_computes_float32_logits(method, arch, request):
    """The head is an Int8Embedding (tied, int8/int4), an Int8Linear (untied, int8/int4) or the
    model's own Embedding or Linear (w8a8): each writes float32 logits in a bf16 model."""
    model = load_model(str(request.getfixturevalue(arch)), torch.bfloat16, 512, quant=QuantConfig(method)).model
    hidden = torch.randn(20, model.config.hidden_size).to(torch.bfloat16)
    with torch.inference_mode():
        for rows in (1, 20):  # int8's weight-only kernel, then its dense path
            logits = model.compute_logits(hidden[:rows])
            assert logits.dtype == torch.float32 and logits.shape == (rows, model.config.vocab_size)


@pytest.mark.slow
def test_int4_of_a_block_quantized_gguf_keeps_its_32_wide_grid():
    llm = LLM(None, quantization="int4", max_model_len=256, kv_cache_memory="64MiB")
    assert llm.engine.quant.group_size == 32
    assert {s["group_size"] for s in llm.engine.quant_specs.values() if s["kind"] == "int4"} == {32}
    explicit = LLM(None, quantization="int4", quant_group_size=64, max_model_len=256, kv_cache_memory="64MiB")
    assert explicit.engine.quant.group_size == 64


@pytest.mark.slow
def test_a_quantized_gguf_folder_keeps_the_eos_the_file_names_in_its_tokenizer(tmp_path):
    assert main(["quantize", "-q", "int8", "--out", str(tmp_path / "q")]) == 0
    gguf = LLM(None, max_model_len=256, kv_cache_memory="64MiB").engine.model_config.eos_token_ids
    saved = json.loads((tmp_path / "q" / "config.json").read_text())
    assert gguf and saved["eos_token_id"] == list(gguf)
    folder = LLM(str(tmp_path / "q"), max_model_len=256, kv_cache_memory="64MiB")
    assert folder.engine.model_config.eos_token_ids == gguf
    out = folder.chat([{"role": "user", "content": "Say hi."}], SamplingParams(temperature=0, max_tokens=200))
    assert out[0].outputs[0].finish_reason == "stop"


def test_skipped_modules_keep_full_precision_and_their_exact_outputs(tiny):
    quant = QuantConfig.create("int8", skip="lm_head,layers.0")
    model = load_model(str(tiny), torch.float32, 512, quant=quant).model
    assert isinstance(model.layers[0].self_attn.qkv_proj, MergedLinear)
    assert isinstance(model.layers[0].mlp.down_proj, Linear)
    assert isinstance(model.layers[1].self_attn.o_proj, Int8Linear)
    assert isinstance(model.embed_tokens, Embedding)  # tied to the skipped head: one tensor, kept whole
    # Mixed precision sits between the two: closer to full precision than int8 everywhere.
    reference, everywhere = _logits(tiny, QuantConfig()), _logits(tiny, QuantConfig("int8"))
    mixed = _logits(tiny, quant)
    err = [max(float((x - r).norm() / r.norm()) for x, r in zip(run, reference, strict=True))
           for run in (mixed, everywhere)]
    assert err[0] < err[1]


def test_a_saved_quantized_folder_reloads_to_identical_logits(tiny, tmp_path):
    out = tmp_path / "int4"
    assert main(["quantize", str(tiny), "-q", "int4", "--quant-group-size", "32",
                 "--dtype", "float32", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "llmserve" and saved["method"] == "int4"
    in_memory = _logits(tiny, QuantConfig("int4", group_size=32))
    reloaded = load_model(str(out), torch.float32, 512)
    assert reloaded.quant.method == "int4"
    assert isinstance(reloaded.model.layers[0].mlp.gate_up_proj, Int4Linear)
    for a, b in zip(paged_logits(reloaded, PROMPTS), in_memory, strict=True):
        assert torch.equal(a, b)
    assert (out / "model.safetensors").stat().st_size < 0.3 * (tiny / "model.safetensors").stat().st_size
    with pytest.raises(ValueError, match="already quantized"):
        load_model(str(out), torch.float32, 512, quant=QuantConfig("int8"))
    with pytest.raises(ValueError, match="already quantized"):
        load_model(str(out), torch.float32, 512, quant=QuantConfig("int4", group_size=64))
    assert load_model(str(out), torch.float32, 512, quant=QuantConfig("int4")).quant.group_size == 32
    # A second write into the folder would mix two checkpoints; the source folder is never overwritten.
    for target in (out, tiny):
        assert main(["quantize", str(tiny), "-q", "int8", "--out", str(target)]) == 2


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_quantize_writes_gets_the_umask_s_mode(tmp_path, umask):
    source, out = tmp_path / "chat", tmp_path / "int8"
    save_tiny_chat_model(source)  # with tokenizer files, written like config.json
    old = os.umask(umask)
    try:
        assert main(["quantize", str(source), "-q", "int8", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()}
    assert "model.safetensors" in modes and "tokenizer.json" in modes
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_a_folder_quantized_by_another_tool_is_refused_clearly(tiny, tmp_path):
    folder = tmp_path / "gptq"
    folder.mkdir()
    config = json.loads((tiny / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantized with 'gptq'"):
        load_model(str(folder), torch.float32, 512)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(quantization="int3"), "unknown quantization 'int3'; choose from none, int8, int4, w8a8, fp8"),
    (dict(quantization="fp8"), "fp8 needs a CUDA GPU"),
    (dict(quantization="int4", quant_group_size=48), "int4 group size must be one of 32, 64, 128"),
    (dict(quantization="int4", quant_group_size=128), "int4 group size 128 does not divide the input dim 64"),
    (dict(quantization="int8", quant_skip="layers.0."), "quant skip names must be module paths"),
    (dict(quantization="int8", quant_skip="lm-head"), "--quant-skip 'lm-head' names no module of this model"),
])
def test_bad_combinations_fail_at_start_with_a_clear_message(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLM(str(tiny), num_kv_blocks=16, max_model_len=512, **kwargs)


def test_cli_reports_a_bad_combination_without_a_traceback(tiny, capsys):
    assert main(["generate", "hi", "--model", str(tiny), "--quantization", "fp8"]) == 2
    assert "fp8 needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("biases_first", [True, False])
def test_load_time_quantization_takes_a_bias_before_or_after_its_weight(qwen2, biases_first):
    from safetensors.torch import load_file

    from llmserve.backends.select import select_backend
    from llmserve.model.loader import _build
    from llmserve.quant.apply import LoadTimeQuantizer

    expected = load_model(str(qwen2), torch.float32, 512, quant=QuantConfig("int8"))
    tensors = sorted(load_file(str(qwen2 / "model.safetensors")).items(),
                     key=lambda item: item[0].endswith("bias") != biases_first)
    net = _build(expected.config, 512, "cpu", select_backend("cpu"))
    quantizer = LoadTimeQuantizer(net, QuantConfig("int8"), torch.float32, "cpu")
    net.load_weights(tensors, torch.float32, "cpu", take=quantizer)
    assert quantizer.specs == expected.quant_specs
    assert net.layers[1].self_attn.qkv_proj.bias is not None
    reloaded = load_model(str(qwen2), torch.float32, 512, quant=QuantConfig("int8"))
    reloaded.model = net.eval()
    for a, b in zip(paged_logits(reloaded, PROMPTS), paged_logits(expected, PROMPTS), strict=True):
        assert torch.equal(a, b)


def test_a_missing_bias_of_a_quantized_module_is_still_reported(qwen2, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(qwen2 / "model.safetensors"))
    for shard in ("q_proj", "k_proj", "v_proj"):
        del tensors[f"model.layers.1.self_attn.{shard}.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((qwen2 / "config.json").read_text())
    with pytest.raises(ValueError, match="checkpoint is missing shard 0 of layers.1.self_attn.qkv_proj.bias"):
        load_model(str(tmp_path), torch.float32, 512, quant=QuantConfig("int8"))


def test_w8a8_in_fp32_gives_a_request_the_same_tokens_alone_batched_and_chunked(tiny):
    # Per-token activation scales and exact int32 products make each row independent of the batch.
    # (bf16 and the weight-only kernels are not batch-invariant: they round differently by row count.)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (5, 38, 17, 3, 29, 40, 11, 24)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)

    def run(batch: list[list[int]], **kwargs) -> list[list[int]]:
        llm = LLM(str(tiny), dtype="float32", quantization="w8a8", num_kv_blocks=64, max_model_len=512,
                  block_size=4, **kwargs)
        return [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in batch], params)]

    alone = [run([p])[0] for p in prompts]
    assert run(prompts) == alone
    assert run(prompts, max_num_batched_tokens=7, max_num_seqs=3) == alone
