"""Prompt logprobs, echo and embeddings over prompts longer than an engine step (chunked prefill),
whose prefix blocks are already cached, and sent all at once beside ordinary requests: each still
equals transformers' float32 numbers, and the ordinary requests' tokens are unchanged."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.server.fp32_server import CHUNK, assert_close
from tests.server.live_server import MODEL_NAME

LONG = [(37 * i) % 900 + 3 for i in range(3 * CHUNK + 11)]  # four chunks, many full KV blocks


def _post(server, path: str, **fields) -> dict:
    resp = httpx.post(server.base_url + path, json={"model": MODEL_NAME, **fields}, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _expected_prompt_logprobs(reference, ids: list[int]) -> list[float | None]:
    rows = reference.prompt_logprobs(ids)
    return [None] + [rows[i, t].item() for i, t in enumerate(ids[1:])]


def _echoed(server, ids: list[int]) -> list[float | None]:
    body = _post(server, "/completions", prompt=ids, echo=True, logprobs=1, max_tokens=0)
    return body["choices"][0]["logprobs"]["token_logprobs"]


def _prompt_logprobs(server, ids: list[int]) -> list[float | None]:
    body = _post(server, "/completions", prompt=ids, prompt_logprobs=0, max_tokens=1, temperature=0)
    return [None if e is None else e[str(t)]["logprob"] for e, t in zip(body["choices"][0]["prompt_logprobs"], ids,
                                                                         strict=True)]


def _embedding(server, ids: list[int]) -> list[float]:
    return _post(server, "/embeddings", input=ids)["data"][0]["embedding"]


def test_a_chunked_prompt_with_its_prefix_cached(fp32_server, reference):
    _post(fp32_server, "/completions", prompt=LONG, max_tokens=1, temperature=0)  # its blocks are now cached
    expected = _expected_prompt_logprobs(reference, LONG)
    assert_close(_echoed(fp32_server, LONG), expected)
    assert_close(_prompt_logprobs(fp32_server, LONG), expected)
    assert_close(_embedding(fp32_server, LONG), reference.embedding(LONG))


def test_all_at_once_beside_ordinary_requests(fp32_server, reference):
    prompts = [LONG[k:k + 70 + 9 * k] for k in range(4)]
    plain = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    alone = _post(fp32_server, "/completions", **plain)["choices"][0]["text"]
    jobs = [(_echoed, p) for p in prompts] + [(_prompt_logprobs, p) for p in prompts] + \
           [(_embedding, p) for p in prompts]
    with ThreadPoolExecutor(max_workers=len(jobs) + 4) as pool:
        ordinary = [pool.submit(_post, fp32_server, "/completions", **plain) for _ in range(4)]
        results = [pool.submit(function, fp32_server, ids) for function, ids in jobs]
        for (function, ids), result in zip(jobs, results, strict=True):
            if function is _embedding:
                assert_close(result.result(), reference.embedding(ids))
            else:
                assert_close(result.result(), _expected_prompt_logprobs(reference, ids))
        assert [o.result()["choices"][0]["text"] for o in ordinary] == [alone] * 4
