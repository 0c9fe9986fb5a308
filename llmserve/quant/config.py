"""What to quantize and how: the method, the int4 group size, and the modules kept in full precision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch

METHODS = ("none", "int8", "int4", "w8a8", "fp8")
INT4_GROUP_SIZES = (32, 64, 128)
DEFAULT_INT4_GROUP_SIZE = 128


@dataclass(frozen=True)
class QuantConfig:
    """`skip` names modules by their path in the model (`lm_head`, `layers.0`, `layers.3.mlp`,
    `embed_tokens`), or by a glob (`layers.*.mlp.down_proj`); a name covers everything under it."""

    method: str = "none"
    # int4 only. None: 32 for a GGUF file in ggml's block formats (its own grid), otherwise 128
    # where it divides a layer's input dim, else 64, else 32.
    group_size: int | None = None
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown quantization {self.method!r}; choose from {', '.join(METHODS)}")
        if self.group_size is not None and self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"int4 group size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, "
                             f"got {self.group_size}")
        if any(not name or name != name.strip(". ") for name in self.skip):
            raise ValueError(f"quant skip names must be module paths like 'lm_head' or 'layers.0', got {self.skip}")

    @classmethod
    def create(cls, method: str | None = None, group_size: int | None = None,
               skip: str | Sequence[str] | None = None) -> QuantConfig:
        """The loose form the CLI and LLM(...) take: skip may be a comma-separated string."""
        if isinstance(skip, str):
            skip = [part.strip() for part in skip.split(",") if part.strip()]
        return cls(method=(method or "none").lower(), group_size=group_size, skip=tuple(skip or ()))

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def skips(self, module_name: str) -> bool:
        return any(skip_matches(s, module_name) for s in self.skip)

    def int4_group_size(self, module_name: str, in_features: int) -> int:
        if self.group_size is not None:
            if in_features % self.group_size:
                raise ValueError(f"int4 group size {self.group_size} does not divide the input dim {in_features} "
                                 f"of {module_name}; choose one of {_dividing(in_features)} or skip the module")
            return self.group_size
        sizes = _dividing(in_features)
        if not sizes:
            raise ValueError(f"int4 needs input dims divisible by 32; {module_name} has {in_features} "
                             f"(keep it in full precision with --quant-skip {module_name})")
        return sizes[0]

    def check_device(self, device: torch.device | str) -> None:
        """Refuse, at start, a method the device cannot run."""
        if self.method != "fp8":
            return
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"fp8 needs a CUDA GPU with fp8 tensor cores (compute capability 8.9+, e.g. "
                             f"Hopper); this engine runs on {device.type}. Use int8, int4 or w8a8 instead")
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 9):
            raise ValueError(f"fp8 needs compute capability 8.9+ (Ada, Hopper); "
                             f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}")

    def describe(self) -> str:
        """A short label for tables and logs, e.g. 'int4 g=64 skip=lm_head'."""
        label = self.method
        if self.method == "int4":
            label += f" g={self.group_size or 'auto'}"
        return label + (f" skip={','.join(self.skip)}" if self.skip else "")


def skip_matches(pattern: str, module_name: str) -> bool:
    """A skip names a module and everything under it, by path or glob."""
    return fnmatchcase(module_name, pattern) or fnmatchcase(module_name, pattern + ".*")


def _dividing(in_features: int) -> list[int]:
    """The int4 group sizes that divide `in_features`, largest first."""
    return [g for g in sorted(INT4_GROUP_SIZES, reverse=True) if in_features % g == 0]
