"""Installs the profiler's timed regions into a built engine, and takes them out again.

Nothing in the model, backend or runner code knows about profiling: the model's modules get a
`TimedOps` proxy in place of the backend's `LayerOps` while profiling, and a few calls (the
embedding, the rope table lookup, quantized linears that bypass `LayerOps.linear`, the runner's
step preparation and sampler) get instance-level wrappers, removed on exit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from llmserve.backends.base import LayerKVCache, LayerOps
from llmserve.profiling import categories as cat
from llmserve.profiling.recorder import Recorder
from llmserve.runner.model_runner import ModelRunner


class TimedOps(LayerOps):
    """The backend's layer calls, each inside a timed region."""

    def __init__(self, inner: LayerOps, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def __getattr__(self, name: str) -> Any:  # anything else a module may read from its ops
        return getattr(self.inner, name)

    def attention(self, q: torch.Tensor, cache: LayerKVCache, meta: Any, scale: float) -> torch.Tensor:
        with self.recorder.region(cat.ATTENTION):
            return self.inner.attention(q, cache, meta, scale)

    def rotate_and_store(self, qk: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         cache: LayerKVCache, meta: Any, num_q_heads: int) -> torch.Tensor:
        with self.recorder.region(cat.ROPE_KV):
            return self.inner.rotate_and_store(qk, v, cos, sin, cache, meta, num_q_heads)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        with self.recorder.region(cat.NORMS):
            return self.inner.rms_norm(x, weight, eps, residual)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        with self.recorder.region(cat.ACTIVATIONS):
            return self.inner.silu_and_mul(gate_up)

    def linear(self, module: nn.Module, x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
        with self.recorder.region(cat.LINEARS):
            return self.inner.linear(module, x, weight, bias)

    def logits(self, module: nn.Module, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        with self.recorder.region(cat.LOGITS):
            return self.inner.logits(module, hidden, weight)


class _TimedSampler:
    def __init__(self, inner: Any, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        with self.recorder.region(cat.SAMPLING):
            return self.inner.sample(*args, **kwargs)


def _timed(call: Callable, category: str, recorder: Recorder) -> Callable:
    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with recorder.region(category):
            return call(*args, **kwargs)
    return wrapper


def _is_quantized(module: nn.Module) -> bool:
    return type(module).__module__.startswith("llmserve.quant.")


def _method_wrappers(runner: ModelRunner, recorder: Recorder) -> list[tuple[Any, str, Callable]]:
    """(object, method name, wrapper) for every call timed by an instance-level wrapper."""
    model = runner.model
    wrappers: list[tuple[Any, str, Callable]] = []

    def wrap(obj: Any, name: str, category: str) -> None:
        wrappers.append((obj, name, _timed(getattr(obj, name), category, recorder)))

    wrap(model.embed_tokens, "forward", cat.EMBEDDING)
    wrap(model.rotary, "forward", cat.ROPE_KV)
    for path, module in model.named_modules():
        if _is_quantized(module):  # its own kernels, not LayerOps.linear
            if path != "embed_tokens":
                wrap(module, "forward", cat.LINEARS)
            if hasattr(module, "logits"):
                wrap(module, "logits", cat.LOGITS)
    wrap(runner.backend, "build_metadata", cat.PREPARATION)

    build = runner.build_step

    @functools.wraps(build)
    def build_and_keep(output: Any) -> Any:
        with recorder.region(cat.PREPARATION):
            kept, batch = build(output)
        recorder.batches.append(batch)  # the step's shapes, for the analytical FLOPs and bytes
        return kept, batch

    wrappers.append((runner, "build_step", build_and_keep))
    return wrappers


@contextmanager
def instrumented(runner: ModelRunner, recorder: Recorder) -> Iterator[None]:
    """Times the runner's model, step preparation and sampler into `recorder` while inside."""
    backend, model = runner.backend, runner.model
    proxy = TimedOps(backend, recorder)
    users = [m for m in model.modules() if getattr(m, "ops", None) is backend]
    wrappers = _method_wrappers(runner, recorder)
    sampler = runner.sampler
    try:
        for module in users:
            module.ops = proxy
        for obj, name, wrapper in wrappers:
            # An instance attribute shadows the class's method; deleting it restores the method.
            object.__setattr__(obj, name, wrapper)
        runner.sampler = _TimedSampler(sampler, recorder)
        yield
    finally:
        runner.sampler = sampler
        for obj, name, _ in reversed(wrappers):
            object.__delattr__(obj, name)
        for module in users:
            module.ops = backend
