"""llmserve: an LLM inference server with its own paged, continuously batched PyTorch engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmserve.pooling_params import PoolingParams
from llmserve.sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "AsyncEngine", "SamplingParams", "PoolingParams", "RequestOutput", "CompletionOutput", "__version__"]

if TYPE_CHECKING:
    from llmserve.engine.async_engine import AsyncEngine
    from llmserve.engine.outputs import CompletionOutput, RequestOutput
    from llmserve.llm import LLM


def __getattr__(name: str):  # torch is imported lazily so `llmserve --help` stays instant
    if name == "LLM":
        from llmserve.llm import LLM

        return LLM
    if name == "AsyncEngine":
        from llmserve.engine.async_engine import AsyncEngine

        return AsyncEngine
    if name in ("RequestOutput", "CompletionOutput"):
        from llmserve.engine import outputs

        return getattr(outputs, name)
    raise AttributeError(name)
