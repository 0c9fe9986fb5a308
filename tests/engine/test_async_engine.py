"""AsyncEngine streams per-step outputs, aborts on early exit, and frees KV blocks."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmserve import PoolingParams, SamplingParams
from llmserve.engine.async_engine import AsyncEngine
from tests.timing import PATIENCE_S
from tests.tiny_models import save_tiny_model

NUM_BLOCKS = 64


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-smollm2")
    save_tiny_model("smollm2", path)
    eng = AsyncEngine.from_args(str(path), max_model_len=128, block_size=4, num_kv_blocks=NUM_BLOCKS)
    yield eng
    eng.shutdown()


async def _collect(engine, request_id, prompt, params):
    return [out async for out in engine.generate(request_id, prompt, params)]


def test_concurrent_streams_complete_with_all_tokens(engine):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)

    async def main():
        prompts = [[3 + i, 10, 20 + i] for i in range(6)]
        return await asyncio.gather(*(_collect(engine, f"s{i}", {"prompt_token_ids": p}, params)
                                      for i, p in enumerate(prompts)))

    streams = asyncio.run(main())
    for outs in streams:
        assert outs[-1].finished and not any(o.finished for o in outs[:-1])
        final = outs[-1].outputs[0]
        assert len(final.token_ids) == 12
        deltas = [t for o in outs for t in o.outputs[0].delta_token_ids]
        assert deltas == final.token_ids
    assert engine.engine.block_manager.num_free_blocks == NUM_BLOCKS


def test_streams_of_prompt_logprobs_embeddings_and_max_tokens_zero(engine):
    prompt = {"prompt_token_ids": [5, 9, 11, 13, 17, 19]}

    async def main():
        return await asyncio.gather(
            _collect(engine, "lp", prompt, SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=1)),
            _collect(engine, "emb", prompt, PoolingParams()),
            _collect(engine, "zero", prompt, SamplingParams(max_tokens=0)))

    logprobs, embedding, zero = asyncio.run(main())
    assert [e and e.token_id for e in logprobs[0].prompt_logprobs] == [None, 9, 11, 13, 17, 19]
    assert all(o.prompt_logprobs is logprobs[0].prompt_logprobs for o in logprobs)
    assert len(embedding) == 1 and embedding[0].finished and len(embedding[0].embedding) == 64
    assert embedding[0].outputs[0].token_ids == [] and embedding[0].outputs[0].finish_reason == "length"
    assert zero[-1].finished and zero[-1].outputs[0].token_ids == [] and zero[-1].embedding is None
    assert engine.engine.block_manager.num_free_blocks == NUM_BLOCKS


def test_leaving_the_stream_early_aborts_and_frees_blocks(engine):
    params = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)

    async def main():
        seen = 0
        async for _ in engine.generate("early", {"prompt_token_ids": [5, 6, 7]}, params):
            seen += 1
            if seen == 3:
                break
        # The abort is applied by the engine thread at its next step, whenever a busy machine runs it.
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            if engine.engine.block_manager.num_free_blocks == NUM_BLOCKS:
                return seen
            await asyncio.sleep(0.01)
        return -1

    assert asyncio.run(main()) == 3
    assert not engine.engine.has_unfinished_requests()


def test_bad_input_raises_before_queueing_and_engine_keeps_serving(engine):
    async def main():
        with pytest.raises(ValueError, match="context length"):
            await _collect(engine, "bad", {"prompt_token_ids": list(range(3, 200))}, SamplingParams())
        return await _collect(engine, "good", {"prompt_token_ids": [4, 5]},
                              SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))

    outs = asyncio.run(main())
    assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 2


def test_duplicate_request_id_fails_only_the_duplicate(engine):
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)

    async def main():
        stream = engine.generate("dup", {"prompt_token_ids": [4, 5]}, params)
        outs = [await anext(stream)]  # the first request is now inside the engine
        with pytest.raises(ValueError, match="already"):
            await _collect(engine, "dup", {"prompt_token_ids": [4, 5]}, params)
        outs += [o async for o in stream]
        return outs

    outs = asyncio.run(main())
    assert len(outs[-1].outputs[0].token_ids) == 60


def test_a_caller_whose_event_loop_closed_does_not_kill_the_engine(engine):
    params = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)

    async def start_and_leave():
        stream = engine.generate("orphan", {"prompt_token_ids": [4, 5, 6]}, params)
        await anext(stream)  # the loop closes with the stream still open and never closed

    loop = asyncio.new_event_loop()
    loop.run_until_complete(start_and_leave())
    loop.close()
    outs = asyncio.run(_collect(engine, "after", {"prompt_token_ids": [4, 5]},
                                SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)))
    assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 3


def test_shutdown_fails_waiting_callers_instead_of_hanging(tmp_path):
    from llmserve.engine.async_engine import EngineDeadError

    save_tiny_model("llama", tmp_path)
    eng = AsyncEngine.from_args(str(tmp_path), max_model_len=64, block_size=4, num_kv_blocks=32)
    eng.shutdown()
    with pytest.raises(EngineDeadError):
        asyncio.run(_collect(eng, "late", {"prompt_token_ids": [4, 5]}, SamplingParams(max_tokens=2)))
