"""Maps the `architectures` name of a checkpoint to our model class."""

from __future__ import annotations

from torch import nn

from llmserve.config import ModelConfig
from llmserve.model.llama import LlamaForCausalLM

_MODELS: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def model_class(config: ModelConfig) -> type[nn.Module]:
    try:
        return _MODELS[config.architecture]
    except KeyError:
        raise ValueError(f"unsupported architecture {config.architecture!r}; llmserve supports: "
                         f"{', '.join(supported_architectures())}") from None
