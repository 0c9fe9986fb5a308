"""Read Llama-family GGUF checkpoints as an HF-style config, float32 tensors and a tokenizer.

Loading speed matters (the engine should be generating within seconds of start), so two hot spots
of the `gguf` package are replaced: metadata parsing (one numpy view per vocabulary string) and
dequantization (numpy, single-threaded) by vectorised torch code for the common block formats.
"""

from __future__ import annotations

import gc
import os
import struct
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QType
from gguf import GGUFValueType

from llmserve.model.llama import fused_shard

if TYPE_CHECKING:
    from llmserve.model.tokenizer import Tokenizer

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# llama.cpp's converter interleaves the rotary halves of q/k rows for these architectures only.
_PERMUTED_QK = {"llama"}

_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_PER_LAYER = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# Precomputed llama3 rope frequency factors: HF derives them from config instead.
_IGNORED_TENSORS = {"rope_freqs.weight"}

_U64 = struct.Struct("<Q")


class _FastGGUFReader(gguf.GGUFReader):
    """GGUFReader that parses a large vocabulary in ~0.1 s instead of ~3 s.

    Stock GGUFReader slices its `np.memmap` once per metadata value; every slice of a memmap
    subclass runs `memmap.__array_finalize__`, ~1M times for a 49k vocabulary. Storing a plain
    ndarray view of the map removes that, and arrays are parsed in bulk rather than per element.
    """

    @property
    def data(self) -> np.ndarray:
        return self._plain

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._plain = np.asarray(value).view(np.ndarray)
        self._bytes = memoryview(self._plain)

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list, list[int], list]:
        if raw_type != GGUFValueType.ARRAY or self.byte_order != "I":
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        count_part = self._get(orig_offs + 4, np.uint64)
        item_type, count = int(raw_itype[0]), int(count_part[0])
        head = [raw_itype, count_part]
        types = [GGUFValueType.ARRAY, GGUFValueType(item_type)]
        if item_type == GGUFValueType.STRING:
            parts, size = self._string_parts(orig_offs + 12, count)
            return 12 + size, head + parts, list(range(3, 2 * count + 2, 2)), types
        np_type = self.gguf_scalar_to_np.get(GGUFValueType(item_type))
        if np_type is None:  # nested arrays: rare, let the stock parser handle them
            return super()._get_field_parts(orig_offs, raw_type)
        # One part holding the whole array: `contents()` with no index still returns every item.
        values = self._get(orig_offs + 12, np_type, count)
        if len(values) != count:
            raise ValueError("array runs past the end of the file")
        return 12 + int(values.nbytes), head + [values], [2], types

    def _string_parts(self, offs: int, count: int) -> tuple[list[memoryview], int]:
        buf, pos, parts = self._bytes, offs, []
        if count * 8 > len(buf) - offs:  # a corrupt count would otherwise loop for ages
            raise ValueError(f"string array of {count} items cannot fit in the file")
        for _ in range(count):
            (length,) = _U64.unpack_from(buf, pos)
            parts.append(buf[pos : pos + 8])
            parts.append(buf[pos + 8 : pos + 8 + length])
            pos += 8 + length
        if pos > len(buf):
            raise ValueError("string array runs past the end of the file")
        return parts, pos - offs


@dataclass
class GGUFCheckpoint:
    """A parsed GGUF file. `tensors()` dequantizes lazily, one tensor at a time.

    Tied embeddings yield no `lm_head.weight`; `config["tie_word_embeddings"]` says so.
    """

    config: dict[str, Any]
    tokenizer: Tokenizer
    path: Path
    metadata: dict[str, Any] = field(repr=False)
    _reader: gguf.GGUFReader = field(repr=False)

    def tensors(self, fuse: bool = False, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
        """HF-named tensors in `dtype`; with `fuse`, q/k/v and gate/up come already fused under our
        fused names. Both happen on the dequantizing workers, in parallel."""
        groups: dict[str, list[tuple[int, tuple]]] = {}
        for tensor in self._reader.tensors:
            job = self._job(tensor)
            if job is None:
                continue
            fused = fused_shard(job[0]) if fuse else None
            name, shard = fused if fused else (job[0], 0)
            groups.setdefault(name, []).append((shard, job))
        # Tensors are independent: dequantize them on a worker per core, each op single-threaded
        # (see _one_thread). Most of the time goes to first-touch page faults on the new fp32
        # buffers, which the kernel also serves faster from several threads; fusing on the
        # workers too keeps that second copy off the loading thread.
        workers = os.cpu_count() or 1
        with _one_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
            # A bounded window, not pool.map: map would dequantize every tensor ahead of the
            # consumer, and a load-time quantizer that frees each one would still see them all held.
            window: deque[tuple[str, Future[torch.Tensor]]] = deque()
            for name, parts in groups.items():
                window.append((name, pool.submit(lambda p: _dequantize_group(p).to(dtype), parts)))
                if len(window) >= 2 * workers:
                    done_name, future = window.popleft()
                    yield done_name, future.result()
            while window:
                done_name, future = window.popleft()
                yield done_name, future.result()

    def is_block_quantized(self) -> bool:
        """Whether weight matrices are stored in ggml's block formats (Q4_0 ... Q8_0, K-quants), whose
        scales step every 32 columns (or finer): the grid an int4 requantization should keep."""
        plain = {QType.F32, QType.F16, QType.BF16}
        return any(len(t.shape) == 2 and t.tensor_type not in plain for t in self._reader.tensors)

    def _job(self, tensor: Any) -> tuple[str, np.ndarray, int, tuple[int, ...]] | None:
        name = hf_tensor_name(tensor.name)
        if name is None:
            return None
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        raw = tensor.data
        if self.metadata["general.architecture"] in _PERMUTED_QK and (
                ".attn_q." in tensor.name or ".attn_k." in tensor.name):
            heads = self.config["num_attention_heads" if ".attn_q." in tensor.name else "num_key_value_heads"]
            raw = raw[_unpermute_rows(shape[0], heads)]
        return name, raw, tensor.tensor_type, shape


def _dequantize_group(parts: list[tuple[int, tuple]]) -> torch.Tensor:
    if len(parts) == 1:
        return dequantize(*parts[0][1][1:])
    return torch.cat([dequantize(*job[1:]) for _, job in sorted(parts, key=lambda part: part[0])])


def read_gguf(path: str | Path) -> GGUFCheckpoint:
    """Parse a GGUF file: metadata, HF config and tokenizer now; tensors on demand."""
    from llmserve.model.tokenizer import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with _gc_paused():
        try:
            # Copy-on-write mapping: tensors can wrap the file without copies and without
            # torch's read-only-buffer warnings, while the file itself can never be modified.
            reader = _FastGGUFReader(path, mode="c")
            metadata = _read_metadata(reader)
        except (ValueError, KeyError, IndexError, OverflowError, struct.error, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a readable GGUF file: {exc}") from exc
        if reader.byte_order != "I":
            raise ValueError(f"{path} was written for the opposite byte order; it cannot be loaded here")
        tensor_names = {t.name: t for t in reader.tensors}
        config = hf_config(metadata, tensor_names)
        for name in tensor_names:  # fail now, not halfway through loading weights
            hf_tensor_name(name)
        tokenizer = Tokenizer.from_gguf_fields(metadata)
    return GGUFCheckpoint(config=config, tokenizer=tokenizer, path=path, metadata=metadata, _reader=reader)


def _read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for name, fld in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        if fld.types[:1] == [GGUFValueType.ARRAY] and fld.types[-1] == GGUFValueType.STRING:
            # A few vocabularies hold tokens that are not valid UTF-8 on their own.
            metadata[name] = [str(fld.parts[i], "utf-8", "replace") for i in fld.data]
        else:
            metadata[name] = fld.contents()
    return metadata


def hf_tensor_name(gguf_name: str) -> str | None:
    """HF parameter name for a llama.cpp tensor name; None for tensors HF has no use for."""
    if gguf_name in _IGNORED_TENSORS:
        return None
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) >= 4 and parts[2] in _PER_LAYER:
        return ".".join(["model.layers", parts[1], _PER_LAYER[parts[2]], *parts[3:]])
    if len(parts) >= 2 and parts[0] in _TOP_LEVEL:
        return ".".join([_TOP_LEVEL[parts[0]], *parts[1:]])
    raise ValueError(f"unexpected tensor {gguf_name!r} in a Llama-family GGUF file")


def hf_config(metadata: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    """An HF `config.json`-style dict from llama.cpp metadata keys."""
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}")

    def get(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{key}")
        if isinstance(value, list):  # per-layer values: HF's Llama-family configs have no such thing
            raise ValueError(f"GGUF metadata {arch}.{key} varies per layer, which is not supported")
        return value

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    vocab = metadata.get(f"{arch}.vocab_size") or len(metadata.get("tokenizer.ggml.tokens", ()))
    if not vocab and "token_embd.weight" in tensors:
        vocab = int(tensors["token_embd.weight"].shape[1])
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": int(get("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "hidden_act": "silu",
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
    }
    rope_scaling = _rope_scaling(metadata, arch)
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    return config


def _rope_scaling(metadata: dict[str, Any], arch: str) -> dict[str, Any] | None:
    kind = metadata.get(f"{arch}.rope.scaling.type")
    factor = metadata.get(f"{arch}.rope.scaling.factor")
    if kind in (None, "none") and factor is None:
        return None
    scaling: dict[str, Any] = {"rope_type": kind or "linear"}
    if factor is not None:
        scaling["factor"] = float(factor)
    original = metadata.get(f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    attn_factor = metadata.get(f"{arch}.rope.scaling.attn_factor")
    if attn_factor is not None:
        scaling["attention_factor"] = float(attn_factor)
    return scaling


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsing creates ~200k short-lived container objects (one per vocabulary string); the
    cyclic GC they trigger rescans the whole heap again and again: 0.45 s of a 0.55 s parse."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the enclosed torch ops on one thread.

    Dequantizing is a handful of cheap elementwise passes per tensor. On a small, busy box
    (2 cores shared with other processes) every multi-threaded op waits at a barrier for a
    descheduled worker: measured 2-15 s for this model with 2 threads vs 0.4-0.9 s with one.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _unpermute_rows(rows: int, heads: int) -> np.ndarray:
    """Row order undoing llama.cpp's per-head interleave of the two rotary halves.

    The converter stores row (h, j, s) = original row (h, s, j) for s in {0, 1}, j < head_dim/2;
    gathering rows in this order restores HF's "rotate_half" layout. Rows are whole quant blocks,
    so the gather runs on the packed bytes before dequantization.
    """
    return np.arange(rows).reshape(heads, -1, 2).swapaxes(1, 2).reshape(-1)


# --- dequantization -----------------------------------------------------------------------------

_BLOCK_BYTES = {QType.Q8_0: 34, QType.Q4_0: 18, QType.Q4_1: 20}


def dequantize(raw: np.ndarray, qtype: int, shape: Sequence[int]) -> torch.Tensor:
    """float32 tensor of HF `shape` from GGUF tensor data (as `ReaderTensor.data` holds it).

    Bit-identical to `gguf.quants.dequantize`: the same float32 operations in the same order.
    """
    qtype = QType(qtype)
    if qtype == QType.F32:
        return _as_tensor(raw).reshape(shape)
    if qtype == QType.F16:
        return _as_tensor(raw).reshape(shape).float()
    if qtype == QType.BF16:
        return _as_bytes(raw).view(torch.bfloat16).reshape(shape).float()
    if qtype in _BLOCK_BYTES:
        blocks = _as_bytes(raw).reshape(-1, _BLOCK_BYTES[qtype])
        return _BLOCK_DEQUANT[qtype](blocks).reshape(shape)
    return torch.from_numpy(gguf.quants.dequantize(raw, qtype)).reshape(shape)


def _as_tensor(raw: np.ndarray) -> torch.Tensor:
    array = np.ascontiguousarray(raw)
    if not array.flags.writeable:  # e.g. a read-only map from the stock GGUFReader
        array = array.copy()
    return torch.from_numpy(array)


def _as_bytes(raw: np.ndarray) -> torch.Tensor:
    return _as_tensor(raw).reshape(-1).view(torch.uint8)


def _f16_column(blocks: torch.Tensor, start: int) -> torch.Tensor:
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    # Low nibbles are elements 0..15 of a block, high nibbles 16..31. Bit ops on a contiguous
    # uint8 copy, then one conversion pass, measured fastest of the torch formulations tried.
    qs = qs.contiguous()
    return torch.cat([qs & 0x0F, qs >> 4], dim=1).float()


def _dequant_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return blocks[:, 2:].view(torch.int8).float().mul_(_f16_column(blocks, 0))


def _dequant_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    return _nibbles(blocks[:, 2:]).sub_(8).mul_(_f16_column(blocks, 0))


def _dequant_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    return _nibbles(blocks[:, 4:]).mul_(_f16_column(blocks, 0)).add_(_f16_column(blocks, 2))


_BLOCK_DEQUANT = {QType.Q8_0: _dequant_q8_0, QType.Q4_0: _dequant_q4_0, QType.Q4_1: _dequant_q4_1}
