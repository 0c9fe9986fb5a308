"""Frozen configuration records shared by the engine, the runner and the CLI."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from llmserve.devices import is_cuda, resolve_device
from llmserve.quant.config import QuantConfig
from llmserve.service_classes import DEFAULT_SERVICE_CLASSES, ServiceClasses
from llmserve.spec_decode.config import SpeculativeConfig

SUPPORTED_ROPE_SCALING = ("default", "linear", "llama3")
BACKENDS = ("auto", "cpu", "torch", "cuda")  # attention backends (llmserve/backends/); auto: the device's own


@dataclass(frozen=True)
class DeviceDefaults:
    """What EngineConfig.create uses for the settings a caller leaves at None, per device type."""

    kv_cache_memory: int | None  # None: sized from the GPU's free memory (gpu_memory_utilization)
    max_num_seqs: int
    max_num_batched_tokens: int


CPU_DEFAULTS = DeviceDefaults(kv_cache_memory=2 << 30, max_num_seqs=64, max_num_batched_tokens=512)
CUDA_DEFAULTS = DeviceDefaults(kv_cache_memory=None, max_num_seqs=256, max_num_batched_tokens=8192)


def device_defaults(device: str) -> DeviceDefaults:
    """`device`: a resolved device (cpu, cuda:0, ...) or anything resolve_device accepts."""
    return CUDA_DEFAULTS if is_cuda(resolve_device(device)) else CPU_DEFAULTS


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama-family decoder, read from an HF config.json-style dict."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    rope_scaling: dict[str, Any] | None = None
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        archs = cfg.get("architectures") or []
        if not archs:
            raise ValueError("model config has no 'architectures' entry")
        arch = archs[0]
        num_heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        head_dim = cfg.get("head_dim") or hidden // num_heads
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        rope_scaling = _rope_scaling(cfg)
        return cls(
            architecture=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(_rope_theta(cfg)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)) or arch == "Qwen2ForCausalLM",
            qk_norm=arch == "Qwen3ForCausalLM",
            rope_scaling=rope_scaling,
            sliding_window=_sliding_window(cfg),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


def _rope_theta(cfg: dict[str, Any]) -> float:
    # transformers 5 moved rope settings into `rope_parameters`; older configs keep `rope_theta`.
    params = cfg.get("rope_parameters") or {}
    return cfg.get("rope_theta") or params.get("rope_theta") or 10000.0


def _rope_scaling(cfg: dict[str, Any]) -> dict[str, Any] | None:
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind not in SUPPORTED_ROPE_SCALING:
        raise ValueError(f"unsupported rope scaling {kind!r}; supported: {', '.join(SUPPORTED_ROPE_SCALING)}")
    return None if kind == "default" else {**scaling, "rope_type": kind}


def _sliding_window(cfg: dict[str, Any]) -> int | None:
    # Qwen2/3 configs carry a window that is off unless use_sliding_window is set.
    if "use_sliding_window" in cfg and not cfg["use_sliding_window"]:
        return None
    window = cfg.get("sliding_window")
    return int(window) if window else None


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    # Bytes for the whole KV pool; None (CUDA only): what gpu_memory_utilization leaves after the
    # weights and a profiling forward.
    kv_cache_memory: int | None = 2 << 30
    num_blocks: int | None = None  # overrides kv_cache_memory when set (tests)
    enable_prefix_caching: bool = True  # reuse full KV blocks across requests that share a prefix
    # vLLM's meaning: the fraction of the GPU's total memory this engine may use (weights, activations, KV).
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        _at_least_one(block_size=self.block_size,
                      kv_cache_memory=1 if self.kv_cache_memory is None else self.kv_cache_memory,
                      num_kv_blocks=1 if self.num_blocks is None else self.num_blocks)
        fraction = self.gpu_memory_utilization
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise ValueError(f"gpu_memory_utilization must be a fraction in (0, 1], got {fraction!r}")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int = 8192
    policy: str = "classes"  # classes | fcfs (engine/policy.py)
    service_classes: ServiceClasses = DEFAULT_SERVICE_CLASSES

    def __post_init__(self) -> None:
        _at_least_one(max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
                      max_model_len=self.max_model_len)


def _at_least_one(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = None  # None => the embedded SmolLM2 GGUF
    dtype: str = "float32"
    load_format: str = "auto"  # auto | safetensors | gguf | dummy
    device: str = "auto"  # auto | cpu | cuda | cuda:N; always stored resolved (cpu, cuda:0, ...)
    enforce_eager: bool = False  # True: no CUDA graphs, every step runs eagerly
    backend: str = "auto"  # attention backend: auto (the device's own) | cpu | torch | cuda
    seed: int = 0
    num_threads: int | None = None
    max_model_len: int | None = None
    quant: QuantConfig = field(default_factory=QuantConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    speculative: SpeculativeConfig | None = None  # None: no speculative decoding

    def __post_init__(self) -> None:
        # Frozen, so the resolved name is written past __setattr__: config.device is always concrete.
        device = resolve_device(self.device)
        object.__setattr__(self, "device", str(device))
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.cache.kv_cache_memory is None and self.cache.num_blocks is None and device.type != "cuda":
            raise ValueError("kv_cache_memory is needed on CPU (only a GPU's pool is sized from its memory)")

    @classmethod
    def create(cls, model: str | None = None, *, dtype: str = "auto", max_model_len: int | None = None,
               kv_cache_memory: int | str | None = None, block_size: int = 16, num_kv_blocks: int | None = None,
               enable_prefix_caching: bool = True, max_num_seqs: int | None = None,
               max_num_batched_tokens: int | None = None, scheduling_policy: str = "classes",
               service_classes: ServiceClasses | None = None, load_format: str = "auto", seed: int = 0,
               num_threads: int | None = None, device: str = "auto", enforce_eager: bool = False,
               backend: str = "auto", gpu_memory_utilization: float = 0.9, quantization: str | None = None,
               quant_group_size: int | None = None, quant_skip: str | list[str] | None = None,
               speculative_config: dict[str, Any] | SpeculativeConfig | None = None) -> EngineConfig:
        """The flat keyword form that LLM(...), AsyncEngine.from_args(...) and the CLI share.

        kv_cache_memory, max_num_seqs and max_num_batched_tokens left at None take the device's
        defaults (CPU_DEFAULTS, CUDA_DEFAULTS); values given always win."""
        resolved = str(resolve_device(device))
        defaults = device_defaults(resolved)
        if kv_cache_memory is None:
            kv_cache_memory = defaults.kv_cache_memory
        return cls(
            model=model, dtype=dtype, load_format=load_format, device=resolved, enforce_eager=enforce_eager,
            backend=backend, seed=seed, num_threads=num_threads, max_model_len=max_model_len,
            quant=QuantConfig.create(quantization, quant_group_size, quant_skip),
            cache=CacheConfig(block_size=block_size,
                              kv_cache_memory=None if kv_cache_memory is None else parse_size(kv_cache_memory),
                              num_blocks=num_kv_blocks, enable_prefix_caching=enable_prefix_caching,
                              gpu_memory_utilization=gpu_memory_utilization),
            scheduler=SchedulerConfig(
                max_num_seqs=defaults.max_num_seqs if max_num_seqs is None else max_num_seqs,
                max_num_batched_tokens=(defaults.max_num_batched_tokens if max_num_batched_tokens is None
                                        else max_num_batched_tokens),
                policy=scheduling_policy, service_classes=service_classes or DEFAULT_SERVICE_CLASSES),
            speculative=SpeculativeConfig.from_dict(speculative_config),
        )


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
               "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}


def parse_size(value: int | float | str) -> int:
    """Accept 2147483648, 2.5e9, '2GiB', '512MB', '4g'."""
    if isinstance(value, int | float):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", value)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"cannot read memory size {value!r}; use bytes or e.g. '2GiB', '512MB'")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])
