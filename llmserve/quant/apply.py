"""Swaps a loaded model's linears (and its embedding) for quantized ones, and rebuilds them from files.

Each swapped module is recorded as a spec, `{"kind": ..., ...}` by module path; a saved checkpoint
carries the specs in its config so loading needs no guessing.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from llmserve.model.layers import Linear, MergedLinear
from llmserve.quant.config import QuantConfig, skip_matches
from llmserve.quant.fp8 import Fp8Linear
from llmserve.quant.int4 import Int4Linear, pack_plain, unpack_plain
from llmserve.quant.int8 import Int8Embedding, Int8Linear

Spec = dict[str, object]

# The vocabulary projection (lm_head, or the embedding tied to it) puts its errors straight on the
# logits. Under int4 it is int8 (llama.cpp also keeps it wider). Under w8a8 it keeps the model's
# dtype, as llm-compressor's w8a8 recipes leave lm_head out: on the embedded model, perplexity is
# +3.5% with it w8a8, +3.1% with it int8 weight-only, +1.9% with it in bf16 (`llmserve eval`).
VOCAB_PROJECTION = {"int8": "int8", "int4": "int8", "w8a8": None, "fp8": "fp8"}


def plan(model: nn.Module, quant: QuantConfig) -> dict[str, str]:
    """Module path -> how `quant` stores it, for every module it swaps."""
    names = [name for name, _ in model.named_modules()] + ["lm_head"]  # a tied head is no module but names one
    for pattern in quant.skip:
        if not any(skip_matches(pattern, name) for name in names):
            raise ValueError(f"--quant-skip {pattern!r} names no module of this model; paths look like lm_head, "
                             "embed_tokens, layers.0, layers.0.mlp.down_proj or globs such as layers.*.mlp")
    targets = {}
    for name, module in model.named_modules():
        if isinstance(module, Linear | MergedLinear) and not quant.skips(name):
            method = VOCAB_PROJECTION[quant.method] if name == "lm_head" else quant.method
            if method is not None:
                targets[name] = method
    if _quantizes_embedding(model, quant):
        targets["embed_tokens"] = "int8_embedding"
    return targets


def quantize_model(model: nn.Module, quant: QuantConfig, dtype: torch.dtype) -> dict[str, Spec]:
    """Quantize a model whose weights are all in place (ideally fp32); other parameters are cast to `dtype`."""
    specs: dict[str, Spec] = {}
    for name, method in plan(model, quant).items():
        module = model.get_submodule(name)
        bias = getattr(module, "bias", None)
        new, specs[name] = quantize_module(name, method, module.weight.detach(),
                                           None if bias is None else bias.detach(), quant, dtype)
        _set_module(model, name, new)
    cast_parameters(model, dtype)
    return specs


class LoadTimeQuantizer:
    """Quantizes each module as its weight arrives from the checkpoint (a `take` for
    `load_weights`), so the full-precision model never exists whole: load-time quantization then
    peaks near the quantized model's size plus the tensors in flight. A missing tensor is still
    reported by `load_weights`, which checks every parameter the model had before any swap."""

    def __init__(self, model: nn.Module, quant: QuantConfig, dtype: torch.dtype, device: torch.device | str) -> None:
        self.model, self.quant, self.dtype, self.device = model, quant, dtype, device
        self.targets = plan(model, quant)
        self.specs: dict[str, Spec] = {}
        self._early_bias: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, tensor: torch.Tensor) -> bool:
        """Whether `tensor` (a whole parameter, by our name) was consumed."""
        path, _, leaf = name.rpartition(".")
        method = self.targets.get(path)
        if method is None:
            return False
        tensor = tensor.to(device=self.device)
        if leaf == "bias":
            if path in self.specs:  # the weight came first: the module is already quantized
                self.model.get_submodule(path).bias = tensor.to(self.dtype)
            else:
                self._early_bias[path] = tensor
            return True
        new, self.specs[path] = quantize_module(path, method, tensor, self._early_bias.pop(path, None),
                                                self.quant, self.dtype)
        _set_module(self.model, path, new)
        return True


def quantize_module(name: str, method: str, weight: torch.Tensor, bias: torch.Tensor | None, quant: QuantConfig,
                    dtype: torch.dtype) -> tuple[nn.Module, Spec]:
    if method == "int8_embedding":
        return Int8Embedding.from_float(weight, dtype), {"kind": "int8_embedding"}
    if method in ("int8", "w8a8"):
        return Int8Linear.from_float(weight, bias, dtype, dynamic=method == "w8a8"), {"kind": method}
    if method == "int4":
        group = quant.int4_group_size(name, weight.shape[1])
        return Int4Linear.from_float(weight, bias, group, dtype), {"kind": "int4", "group_size": group}
    return Fp8Linear.from_float(weight, bias, dtype), {"kind": "fp8"}


def _quantizes_embedding(model: nn.Module, quant: QuantConfig) -> bool:
    """int8 rows for the integer methods. Tied to the LM head, it follows the head: one skip keeps
    both, as they are one tensor. Under fp8 (a GPU, where memory is rarely the limit) it stays as it is."""
    if quant.method not in ("int8", "int4", "w8a8") or quant.skips("embed_tokens"):
        return False
    if model.lm_head is None:
        return VOCAB_PROJECTION[quant.method] == "int8" and not quant.skips("lm_head")
    return True


def build_quantized_modules(model: nn.Module, specs: dict[str, Spec], tensors: dict[str, torch.Tensor],
                            dtype: torch.dtype, device: torch.device | str) -> None:
    """Put saved quantized modules in place, consuming their tensors from `tensors`."""
    for name, spec in specs.items():
        def take(key: str, name: str = name) -> torch.Tensor:
            try:
                return tensors.pop(f"{name}.{key}").to(device)
            except KeyError:
                raise ValueError(f"quantized checkpoint is missing {name}.{key}") from None

        bias = tensors.pop(f"{name}.bias", None)
        bias = None if bias is None else bias.to(device)
        kind = spec.get("kind")
        if kind in ("int8", "w8a8"):
            module: nn.Module = Int8Linear(take("qweight"), take("weight_scale"), bias, dtype, kind == "w8a8")
        elif kind == "int4":
            module = Int4Linear(unpack_plain(take("qweight")), take("weight_scale"), take("weight_zero"),
                                int(spec["group_size"]), bias, dtype)
        elif kind == "fp8":
            module = Fp8Linear(take("qweight"), take("weight_scale"), bias, dtype)
        elif kind == "int8_embedding":
            module = Int8Embedding(take("qweight"), take("weight_scale"), dtype)
        else:
            raise ValueError(f"unknown quantized module kind {kind!r} for {name}")
        _set_module(model, name, module)


def portable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor to save, under our module paths; int4 weights in their device-free plain layout."""
    state: dict[str, torch.Tensor] = {}
    int4 = {name: m for name, m in model.named_modules() if isinstance(m, Int4Linear)}
    for name, module in int4.items():
        scale, zero = module.scales()
        state.update({f"{name}.qweight": pack_plain(module.unpacked()), f"{name}.weight_scale": scale,
                      f"{name}.weight_zero": zero})
    for key, tensor in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner not in int4 or leaf == "bias":
            state[key] = tensor
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    for module in model.modules():
        for key, param in module._parameters.items():
            if param is not None and param.is_floating_point() and param.dtype != dtype:
                module._parameters[key] = nn.Parameter(param.detach().to(dtype), requires_grad=False)


def weights_nbytes(model: nn.Module) -> int:
    """Bytes of weights the model holds (shared tensors once); the rope tables are not weights."""
    seen: set[int] = set()
    total = 0
    for tensor in _weight_tensors(model):
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def _weight_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    for name, buffer in model.named_buffers():
        if not name.startswith("rotary."):
            yield buffer


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
