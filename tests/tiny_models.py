"""Tiny random checkpoints of each supported architecture, saved with transformers."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)


def tiny_config(arch: str, **overrides):
    import transformers

    if overrides:
        config = tiny_config(arch)
        for key, value in overrides.items():
            setattr(config, key, value)
        return config

    if arch == "llama":
        return transformers.LlamaConfig(**TINY_BASE, rope_theta=10000.0)
    if arch == "llama3":
        scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64, "rope_theta": 500000.0}
        return transformers.LlamaConfig(**TINY_BASE, rope_parameters=scaling)
    if arch == "smollm2":
        return transformers.LlamaConfig(**TINY_BASE, tie_word_embeddings=True, rope_theta=100000.0)
    if arch == "mistral":
        return transformers.MistralConfig(**TINY_BASE, sliding_window=None)
    if arch == "qwen2":
        return transformers.Qwen2Config(**TINY_BASE)
    if arch == "qwen3":
        return transformers.Qwen3Config(**TINY_BASE, head_dim=32)
    raise ValueError(arch)


ARCHS = ["llama", "llama3", "smollm2", "mistral", "qwen2", "qwen3"]


def save_tiny_model(arch: str, folder: Path, seed: int = 0, **overrides):
    """Build a random HF model, make it less degenerate than its init, save it; returns the HF model."""
    import transformers

    torch.manual_seed(seed)
    config = tiny_config(arch, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        # HF initialises with std 0.02: logits then sit in a tiny range where greedy ties are common.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)
    model.save_pretrained(folder)
    return model


def save_tiny_chat_model(folder: Path) -> None:
    """A tiny random SmolLM2-shaped model wearing the embedded model's real tokenizer and chat template,
    so text prompts, chat and detokenization run for real at the speed of a tiny model."""
    from llmserve.model.embedded import embedded_model_path
    from llmserve.model.gguf_reader import read_gguf

    tokenizer = read_gguf(embedded_model_path()).tokenizer
    save_tiny_model("smollm2", folder, vocab_size=tokenizer.vocab_size, max_position_embeddings=1024)
    tokenizer.save(folder)
