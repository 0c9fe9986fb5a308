"""Builds a model from an HF safetensors folder, a GGUF file, or dummy weights."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from llmserve.backends.base import LayerOps
from llmserve.backends.select import select_backend
from llmserve.config import ModelConfig
from llmserve.model.embedded import embedded_model_path
from llmserve.model.layers import RotaryEmbedding
from llmserve.model.registry import model_class
from llmserve.quant.apply import LoadTimeQuantizer, build_quantized_modules, quantize_model
from llmserve.quant.checkpoint import saved_quantization
from llmserve.quant.config import QuantConfig

if TYPE_CHECKING:
    from llmserve.model.tokenizer import Tokenizer

LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    config: ModelConfig
    tokenizer: Tokenizer | None
    path: Path
    hf_config: dict  # the checkpoint's config.json (or the GGUF file's equivalent)
    quant: QuantConfig = field(default_factory=QuantConfig)
    quant_specs: dict[str, dict] = field(default_factory=dict)  # module path -> how it is quantized


def resolve_dtype(name: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name == "auto" and torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "auto":
        # bf16 where the CPU multiplies it natively (AMX: several times fp32's speed here);
        # elsewhere bf16 matmuls are slower than fp32, and fp32 matches the reference exactly.
        return torch.bfloat16 if cpu_has_amx_bf16() else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}") from None


def cpu_has_amx_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as info:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in info)
    except OSError:  # not Linux: stay with fp32, which is right everywhere
        return False


def load_model(model: str | None, dtype: torch.dtype, max_model_len: int, load_format: str = "auto",
               device: str = "cpu", seed: int = 0, quant: QuantConfig | None = None,
               ops: LayerOps | None = None) -> LoadedModel:
    """`ops`: the layer calls of the engine's backend; by default the device's own backend's."""
    quant = quant or QuantConfig()
    ops = ops or select_backend(device)
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r}; choose from {', '.join(LOAD_FORMATS)}")
    quant.check_device(device)
    path = embedded_model_path() if model is None else Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist")
    if path.is_file() or load_format == "gguf":
        return _load_gguf(path, dtype, max_model_len, device, quant, ops)
    hf_config = _read_config(path)
    config = ModelConfig.from_hf_dict(hf_config)
    # Without tokenizer.json the model still serves prompts given as token ids.
    tokenizer = _folder_tokenizer(path)
    net = _build(config, max_model_len, device, ops)
    saved = saved_quantization(hf_config, quant)
    if saved is not None:
        saved.config.check_device(device)
        tensors = dict(_safetensors(path))
        build_quantized_modules(net, saved.specs, tensors, dtype, device)
        net.load_weights(tensors.items(), dtype, device)
        return LoadedModel(net.eval(), config, tokenizer, path, hf_config, saved.config, saved.specs)
    loaded = LoadedModel(net, config, tokenizer, path, hf_config, quant)
    if load_format == "dummy":
        # Quantizers start from fp32 weights, so the only rounding is their own.
        _init_dummy(net, seed, torch.float32 if quant.enabled else dtype, device)
        if quant.enabled:
            loaded.quant_specs = quantize_model(net, quant, dtype)
    else:
        _load_weights(loaded, _safetensors(path), dtype, device)
    net.eval()
    return loaded


def _load_gguf(path: Path, dtype: torch.dtype, max_model_len: int, device: str, quant: QuantConfig,
               ops: LayerOps) -> LoadedModel:
    from llmserve.model.gguf_reader import read_gguf  # the gguf package is only needed for GGUF files

    checkpoint = read_gguf(path)
    config = ModelConfig.from_hf_dict(checkpoint.config)
    tokenizer = checkpoint.tokenizer
    if tokenizer.eos_token_ids and not config.eos_token_ids:
        config = replace(config, eos_token_ids=tuple(tokenizer.eos_token_ids))
    if quant.method == "int4" and quant.group_size is None and checkpoint.is_block_quantized():
        # Groups of 32 land on the file's own grid; wider ones round its already rounded values
        # again (measured on the embedded Q4_1 file: perplexity +0.1% at 32, +27% at 64).
        quant = replace(quant, group_size=32)
    net = _build(config, max_model_len, device, ops)
    loaded = LoadedModel(net, config, tokenizer, path, checkpoint.config, quant)
    # Quantizers start from fp32 weights, so the only rounding is their own.
    _load_weights(loaded, checkpoint.tensors(fuse=True, dtype=torch.float32 if quant.enabled else dtype),
                  dtype, device)
    net.eval()
    return loaded


def _load_weights(loaded: LoadedModel, weights: Iterator[tuple[str, torch.Tensor]], dtype: torch.dtype,
                  device: str) -> None:
    """Checkpoint tensors into the model; with quantization on, each module is quantized as its
    weight arrives, so the full-precision model is never held whole."""
    if not loaded.quant.enabled:
        loaded.model.load_weights(weights, dtype, device)
        return
    quantizer = LoadTimeQuantizer(loaded.model, loaded.quant, dtype, device)
    loaded.model.load_weights(weights, dtype, device, take=quantizer)
    loaded.quant_specs = quantizer.specs


def _folder_tokenizer(path: Path) -> Tokenizer | None:
    if not (path / "tokenizer.json").exists():
        return None
    from llmserve.model.tokenizer import Tokenizer

    return Tokenizer.from_folder(path)


def _read_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json (expected an HF model folder or a .gguf file)")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_file} is not valid JSON: {exc}") from None


def _build(config: ModelConfig, max_model_len: int, device: str, ops: LayerOps) -> nn.Module:
    """The model with meta-device parameters (filled by load_weights) and real rope tables."""
    cls = model_class(config)
    rotary = RotaryEmbedding(config, max_model_len).to(device)
    with torch.device("meta"):
        return cls(config, rotary, ops)


def _safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no *.safetensors files")
    for file in files:
        try:
            handle = safe_open(str(file), framework="pt")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read {file}: {exc}") from None
        with handle as f:
            for name in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                yield name, f.get_tensor(name)


def _init_dummy(net: nn.Module, seed: int, dtype: torch.dtype, device: str) -> None:
    """Random weights of the right shapes, for benchmarks of configurations we have no checkpoint for."""
    # Drawn on the device itself: an 8B model's weights drawn on the host would take minutes.
    gen = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, param in net.named_parameters():
        if "norm" in name:
            tensor = torch.ones(param.shape, dtype=dtype, device=device)
        elif name.endswith("bias"):
            tensor = torch.zeros(param.shape, dtype=dtype, device=device)
        else:
            tensor = torch.randn(param.shape, generator=gen, device=device).mul_(0.02).to(dtype)
        state[name] = tensor
    net.load_state_dict(state, strict=False, assign=True)
