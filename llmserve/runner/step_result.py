"""What one engine step's model run hands back to the engine: sampled tokens and prompt results."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmserve.engine.outputs import TokenLogprobs


@dataclass(frozen=True)
class SampledToken:
    seq_index: int  # the sequence's place in SchedulerOutput.sequences
    token_id: int
    logprobs: TokenLogprobs | None
    is_draft: bool = False  # an accepted draft: its KV was computed this step (speculative decoding)


@dataclass
class StepResult:
    # A sequence's tokens in order: more than one when it verified drafts (accepted drafts, then one more)
    sampled: list[SampledToken] = field(default_factory=list)
    # seq index -> the prompt logprobs this chunk's rows give: for a chunk at positions [s, e) of a
    # prompt of P tokens, the entries of tokens s + 1 .. min(e, P - 1), in order.
    prompt_logprobs: dict[int, list[TokenLogprobs]] = field(default_factory=dict)
    # seq index -> float32 sum over this chunk's rows of the last hidden states (after the final norm)
    pooled: dict[int, torch.Tensor] = field(default_factory=dict)
