"""The official openai client against a live server: completions and chat, sync and streaming."""

from __future__ import annotations

import asyncio
import itertools
import time

import openai
import pytest

from llmserve import SamplingParams
from tests.server.live_server import MODEL_NAME

_ids = itertools.count()


def engine_reference(engine, prompt, max_tokens: int, **params):
    """What the engine itself generates for this prompt: the server must hand back exactly this."""
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, **params)

    async def run():
        final = None
        async for out in engine.generate(f"ref-{next(_ids)}", prompt, sampling):
            final = out
        return final

    return asyncio.run(run())


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def test_completion_matches_the_engine_with_exact_usage(server, client):
    ref = engine_reference(server.engine, "The capital of France is", 12, ignore_eos=True)
    resp = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=12,
                                     temperature=0, extra_body={"ignore_eos": True})
    assert resp.object == "text_completion" and resp.model == MODEL_NAME
    assert resp.choices[0].text == ref.outputs[0].text
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == len(ref.prompt_token_ids) + 12


def test_streamed_completion_equals_the_whole_one(server, client):
    whole = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=20, temperature=0,
                                      extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=20,
                                            temperature=0, stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert len(text_chunks) > 1  # it really streamed
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 20
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_token_id_prompts_lists_of_prompts_and_n(server, client):
    ref = engine_reference(server.engine, [5, 6, 7, 8], 6, ignore_eos=True)
    resp = client.completions.create(model=MODEL_NAME, prompt=[[5, 6, 7, 8], [9, 10]], max_tokens=6, temperature=0,
                                     n=2, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in resp.choices) == [0, 1, 2, 3]
    by_index = {c.index: c.text for c in resp.choices}
    assert by_index[0] == by_index[1] == ref.outputs[0].text  # greedy: both samples of prompt 0 agree
    assert resp.usage.prompt_tokens == 6 and resp.usage.completion_tokens == 24


def test_stop_string_ends_with_stop_and_is_not_returned(server, client):
    full = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=30, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = full.strip()[3:6]
    assert stop, full
    resp = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=30, temperature=0, stop=[stop],
                                     extra_body={"ignore_eos": True})
    choice = resp.choices[0]
    assert choice.finish_reason == "stop" and stop not in choice.text
    assert full.startswith(choice.text)


def test_completion_logprobs(server, client):
    resp = client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=5, temperature=0, logprobs=3,
                                     extra_body={"ignore_eos": True})
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(len(top) <= 3 for top in lp.top_logprobs)
    for logprob, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0 and max(top.values()) == pytest.approx(logprob)  # greedy takes the best
    assert "".join(lp.tokens) == resp.choices[0].text


def test_chat_matches_the_engine_on_the_rendered_template(server, client):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    rendered = server.engine.tokenizer.apply_chat_template(messages)
    ids = server.engine.tokenizer.encode(rendered, add_special_tokens=False)
    ref = engine_reference(server.engine, {"prompt_token_ids": ids}, 10, ignore_eos=True)
    resp = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_completion_tokens=10,
                                          temperature=0, extra_body={"ignore_eos": True})
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == ref.outputs[0].text
    assert resp.usage.prompt_tokens == len(ids) and resp.usage.completion_tokens == 10


def test_chat_stream_with_text_parts_and_usage(server, client):
    whole = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Say hi"}],
                                           max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": [{"type": "text", "text": "Say"},
                                                                 {"type": "text", "text": " hi"}]}],
        max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_chat_logprobs_and_seeded_sampling(server, client):
    kwargs = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Pick a word"}], max_tokens=8,
                  temperature=1.0, seed=7, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert first.choices[0].message.content == second.choices[0].message.content
    content = first.choices[0].logprobs.content
    assert len(content) == 8 and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.bytes == list(t.token.encode()) for t in content)


def test_async_client_streams_concurrently_with_exact_usage(server):
    async def main():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)

        async def one(i: int):
            stream = await client.completions.create(
                model=MODEL_NAME, prompt=f"Request number {i}:", max_tokens=8 + i % 5, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            chunks = [c async for c in stream]
            return i, chunks

        results = await asyncio.gather(*(one(i) for i in range(32)))
        await client.close()
        return results

    for i, chunks in asyncio.run(main()):
        assert chunks[-1].usage.completion_tokens == 8 + i % 5
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert server.engine.engine.block_manager.num_free_blocks == server.engine.engine.block_manager.num_blocks


def test_models_and_version(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    # A Unix time in whole seconds (not a monotonic clock's reading): the server started today.
    assert isinstance(models.data[0].created, int)
    assert abs(models.data[0].created - time.time()) < 24 * 3600
    import httpx

    import llmserve
    assert httpx.get(server.url + "/version").json() == {"version": llmserve.__version__}
