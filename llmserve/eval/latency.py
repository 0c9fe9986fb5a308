"""Per-token decode latency and throughput at a fixed batch size, measured on the engine's own steps."""

from __future__ import annotations

import time
from dataclasses import dataclass

from llmserve.engine.engine import LLMEngine
from llmserve.sampling_params import SamplingParams


@dataclass
class DecodeTiming:
    batch_size: int
    step_seconds: list[float]  # one per decode step, each giving every request one token

    @property
    def tokens_per_second(self) -> float:
        return self.batch_size * len(self.step_seconds) / sum(self.step_seconds)


def measure_decode(engine: LLMEngine, prompt_ids: list[int], batch_size: int, decode_tokens: int) -> DecodeTiming:
    """Prefill `batch_size` copies of the prompt, then time the steps where all of them decode.

    The copies differ in their first token so the prefix cache cannot make them one request.
    Prefills spread over several steps, so the first requests also finish first: steps of that
    thinning tail are not counted, only those where every request got a token.
    """
    params = SamplingParams(temperature=0.0, max_tokens=decode_tokens + 1, ignore_eos=True)
    ids = [f"decode-{batch_size}-{i}" for i in range(batch_size)]
    vocab = engine.model_config.vocab_size
    for i, rid in enumerate(ids):
        engine.add_request(rid, [(prompt_ids[0] + i) % vocab, *prompt_ids[1:]], params)
    started: set[str] = set()
    steps: list[float] = []
    while engine.has_unfinished_requests():
        all_decoding = len(started) == batch_size
        begin = time.perf_counter()
        outputs = engine.step()
        elapsed = time.perf_counter() - begin
        if all_decoding and len(outputs) == batch_size:
            steps.append(elapsed)
        started.update(o.request_id for o in outputs if o.outputs[0].token_ids)
    return DecodeTiming(batch_size, steps)
