"""The Llama family (Llama 2/3, Mistral, Qwen2, Qwen3, SmolLM2) as one decoder.

The variants differ only in switches read from ModelConfig: qkv bias (Qwen2), per-head q/k
RMSNorm (Qwen3), tied embeddings (SmolLM2), rope scaling (Llama 3). Inputs are flat: all the
step's tokens of all sequences in one [T] tensor, so one forward serves a mixed batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch
from torch import nn

from llmserve.backends.base import LayerKVCache, LayerOps
from llmserve.config import ModelConfig
from llmserve.model.layers import (
    Embedding,
    GatedMLP,
    Linear,
    MergedLinear,
    RMSNorm,
    RotaryEmbedding,
)


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, ops: LayerOps) -> None:
        super().__init__()
        self.ops = ops
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = MergedLinear(config.hidden_size, [q_size, kv_size, kv_size], config.attention_bias, ops)
        self.o_proj = Linear(q_size, config.hidden_size, ops)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ops) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ops) if config.qk_norm else None
        self.scale = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: LayerKVCache,
                meta: object) -> torch.Tensor:
        tokens = x.shape[0]
        qkv = self.qkv_proj(x).view(tokens, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        qk, v = qkv[:, :self.num_heads + self.num_kv_heads], qkv[:, self.num_heads + self.num_kv_heads:]
        if self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :self.num_heads]), self.k_norm(qk[:, self.num_heads:])), dim=1)
        q = self.ops.rotate_and_store(qk, v, *rope, cache, meta, self.num_heads)
        out = self.ops.attention(q, cache, meta, self.scale)
        return self.o_proj(out.reshape(tokens, -1))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, ops: LayerOps) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, ops)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, ops)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor],
                cache: LayerKVCache, meta: object) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it): the next layer (or the final
        norm) adds the two inside its norm, in the order HF adds them."""
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.add_and_norm(x, residual)
        h = self.self_attn(h, rope, cache, meta)
        h, residual = self.post_attention_layernorm.add_and_norm(h, residual)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, ops: LayerOps) -> None:
        """`rotary` is built by the caller: the model itself is usually built on the meta device,
        where computing the tables would trace through torch's decompositions (seconds of start-up).
        `ops` are the chosen backend's layer calls."""
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, ops)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, ops) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.rotary = rotary
        self.lm_head = None if config.tie_word_embeddings else Linear(config.hidden_size, config.vocab_size, ops)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[LayerKVCache],
                meta: object) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm."""
        x = self.embed_tokens(input_ids)
        rope = self.rotary(positions)
        residual = None
        for layer, cache in zip(self.layers, kv_caches, strict=True):
            x, residual = layer(x, residual, rope, cache, meta)
        if residual is None:  # no layers
            return self.norm(x)
        return self.norm.add_and_norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits, accumulated in float32 whatever the model's dtype: rounded to bf16 they tie,
        and greedy picks go another way than the model's. Every head module (Linear, Embedding and
        their quantized stand-ins) has `logits`."""
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        return head.logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype,
                     device: torch.device | str, take: Callable[[str, torch.Tensor], bool] | None = None) -> None:
        """Adopt HF-named tensors as parameters (no copy where dtype and device already match),
        fusing q/k/v and gate/up; the model may live on the meta device until then.

        `take(name, tensor)` sees each whole parameter as soon as its last piece arrives and says
        whether it consumed it (a load-time quantizer does), so tensors need not all be held at once.
        """
        pieces: dict[str, dict[int | None, torch.Tensor]] = {}
        params = dict(self.named_parameters())
        # Read before a load-time quantizer swaps modules: how many shards make each fused parameter whole.
        shards = {f"{path}.{leaf}": len(module.out_sizes) for path, module in self.named_modules()
                  if isinstance(module, MergedLinear) for leaf in ("weight", "bias")}
        state: dict[str, torch.Tensor] = {}
        taken: set[str] = set()
        for hf_name, tensor in weights:
            target = _map_hf_name(hf_name)
            if target is None or (target[0] == "lm_head.weight" and self.lm_head is None):
                continue
            name, shard = target
            if name not in params:
                raise ValueError(f"checkpoint tensor {hf_name!r} has no place in {self.config.architecture}")
            parts = pieces.setdefault(name, {})
            parts[shard] = tensor
            if None in parts or len(parts) == shards.get(name):
                whole = _assemble(name, params[name], pieces.pop(name), shards.get(name))
                if take is not None and take(name, whole):
                    taken.add(name)
                else:
                    state[name] = whole.to(dtype=dtype, device=device)
        for name, param in params.items():
            if name not in state and name not in taken:
                _assemble(name, param, pieces.get(name, {}), shards.get(name))  # raises, naming what is missing
        self.load_state_dict(state, strict=False, assign=True)


def _assemble(name: str, param: torch.Tensor, parts: dict[int | None, torch.Tensor],
              num_shards: int | None) -> torch.Tensor:
    """One parameter from its checkpoint pieces: whole (None), or `num_shards` to concatenate."""
    if None in parts:
        tensor = parts[None]  # a plain tensor, or shards the checkpoint reader fused already
    elif num_shards is not None:
        missing = [i for i in range(num_shards) if i not in parts]
        if missing:
            raise ValueError(f"checkpoint is missing shard {missing[0]} of {name}")
        tensor = torch.cat([parts[i] for i in range(num_shards)])
    else:
        raise ValueError(f"checkpoint is missing tensor {name}")
    if tensor.shape != param.shape:
        raise ValueError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}")
    return tensor


_FUSED = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
          "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
_FUSED_RE = re.compile(r"(.*)\.(q_proj|k_proj|v_proj|gate_proj|up_proj)\.(weight|bias)$")


def fused_shard(hf_name: str) -> tuple[str, int] | None:
    """('…qkv_proj.weight', 1) for an HF '…k_proj.weight': the fused tensor a shard belongs to and
    its place in it. Checkpoint readers may fuse shards themselves and hand over the fused name."""
    match = _FUSED_RE.match(hf_name)
    if match is None:
        return None
    fused, shard = _FUSED[match.group(2)]
    return f"{match.group(1)}.{fused}.{match.group(3)}", shard


def _map_hf_name(hf_name: str) -> tuple[str, int | None] | None:
    if "rotary_emb" in hf_name:
        return None
    name = hf_name.removeprefix("model.")
    return fused_shard(name) or (name, None)
