"""What an embedding (pooling) request asks for, in place of SamplingParams. Plain Python, no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolingParams:
    """The request generates nothing: its output's `embedding` is the mean of the model's last hidden
    states over every prompt token (after the final norm, as HF's `last_hidden_state`), in float32."""

    normalize: bool = True  # scale the mean to unit L2 norm, as embedding APIs return it

    def __post_init__(self) -> None:
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be a bool, got {self.normalize!r}")
