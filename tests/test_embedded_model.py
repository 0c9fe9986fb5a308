"""End-to-end checks on the embedded SmolLM2-135M-Instruct GGUF, against transformers' own GGUF path."""

from __future__ import annotations

import math

import pytest
import torch

from llmserve import LLM, SamplingParams
from llmserve.engine.outputs import RequestOutput
from llmserve.model.embedded import embedded_model_path

pytestmark = pytest.mark.slow

# One thread: on a small shared CI box, two threads contending with other work run several times slower.
THREADS = 1
MAX_NEW_TOKENS = 40
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "Explain gravity in one sentence.",
    "Give me a tip for learning to code.",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)


def _conversation(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(dtype="float32", num_threads=THREADS)


@pytest.fixture(scope="module")
def reference():
    """transformers' tokenizer and model, both loaded from the same GGUF file as ours."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    path = embedded_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return tokenizer, model.eval()


@pytest.fixture(scope="module")
def greedy_chats(llm: LLM) -> list[RequestOutput]:
    return llm.chat([_conversation(p) for p in CHAT_PROMPTS], GREEDY)


def _reference_prompt_ids(tokenizer, text: str) -> list[int]:
    encoded = tokenizer.apply_chat_template(_conversation(text), add_generation_prompt=True, tokenize=True,
                                            return_dict=True)
    return list(encoded["input_ids"])


def _reference_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def _divergence_report(model, prompt_ids: list[int], ours: list[int], theirs: list[int]) -> str:
    """Where the two greedy runs part, how far apart the reference's logits for both choices are."""
    step = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + ours[:step]])).logits[0, -1]
    gap = (logits[theirs[step]] - logits[ours[step]]).item()
    return (f"diverged at new token {step}: ours {ours[step]}, transformers {theirs[step]}, "
            f"reference logit gap {gap:.4f} (a near-tie if tiny)")


# --- parity with transformers ---------------------------------------------------------------------------


def test_chat_prompt_matches_transformers(greedy_chats, reference) -> None:
    tokenizer, _ = reference
    for text, out in zip(CHAT_PROMPTS, greedy_chats, strict=True):
        rendered = tokenizer.apply_chat_template(_conversation(text), add_generation_prompt=True, tokenize=False)
        assert out.prompt == rendered
        assert out.prompt_token_ids == _reference_prompt_ids(tokenizer, text)


def test_greedy_chat_tokens_match_transformers(greedy_chats, reference) -> None:
    tokenizer, model = reference
    for text, out in zip(CHAT_PROMPTS, greedy_chats, strict=True):
        prompt_ids = _reference_prompt_ids(tokenizer, text)
        ours = out.outputs[0].token_ids
        theirs = _reference_greedy(model, prompt_ids, MAX_NEW_TOKENS)
        if ours != theirs:
            pytest.fail(f"{text!r}: {_divergence_report(model, prompt_ids, ours, theirs)}")


def test_logprobs_match_transformers(llm, reference) -> None:
    _, model = reference
    prompt = "The capital of France is"
    out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=6, logprobs=5))[0]
    completion = out.outputs[0]
    ids = out.prompt_token_ids + completion.token_ids
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, len(out.prompt_token_ids) - 1:-1]
    expected = torch.log_softmax(logits.float(), dim=-1)
    for step, entry in enumerate(completion.logprobs):
        assert entry.logprob == pytest.approx(expected[step, entry.token_id].item(), abs=2e-3)
        for token_id, logprob in entry.top:
            assert logprob == pytest.approx(expected[step, token_id].item(), abs=2e-3)


# --- the engine on a real model -------------------------------------------------------------------------


def test_natural_end_is_stop_without_eos_text(llm, greedy_chats) -> None:
    eos_ids = llm.engine.model_config.eos_token_ids
    ended = [o.outputs[0] for o in greedy_chats if o.outputs[0].finish_reason == "stop"]
    assert ended, "no chat answer ended before max_tokens"
    for completion in ended:
        assert completion.token_ids[-1] in eos_ids
        assert completion.stop_reason is None
        assert llm.tokenizer.eos_token not in completion.text
        assert completion.text == llm.tokenizer.decode(completion.token_ids)
        assert completion.text.strip()
    capped = [o.outputs[0] for o in greedy_chats if o.outputs[0].finish_reason == "length"]
    assert all(len(c.token_ids) == MAX_NEW_TOKENS for c in capped)


def _stop_case(greedy_chats) -> tuple[list[dict[str, str]], str, str, list[int]]:
    """A conversation, a stop string spanning tokens in its greedy answer, the answer and its tokens."""
    out = greedy_chats[CHAT_PROMPTS.index("Write a haiku about the sea.")].outputs[0]
    words = out.text.split()
    stop = " ".join(words[4:6])  # two words mid-answer, e.g. "sea, a"
    return _conversation(CHAT_PROMPTS[1]), stop, out.text, out.token_ids


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_truncates(llm, greedy_chats, include: bool) -> None:
    conversation, stop, full_text, full_tokens = _stop_case(greedy_chats)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, stop=["never appears", stop],
                            include_stop_str_in_output=include)
    completion = llm.chat(conversation, params)[0].outputs[0]
    position = full_text.index(stop)
    assert completion.finish_reason == "stop"
    assert completion.stop_reason == stop
    if include:
        assert completion.text == full_text[:position + len(stop)]
    else:
        assert completion.text == full_text[:position]
        assert stop not in completion.text
    # Generation halts on the token that completes the stop string, having followed the greedy path.
    assert completion.token_ids == full_tokens[:len(completion.token_ids)]
    assert len(completion.token_ids) < len(full_tokens)


def _stream(llm: LLM, requests: dict[str, dict]) -> dict[str, tuple[list[str], RequestOutput]]:
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
    for request_id, prompt in requests.items():
        engine.add_request(request_id, prompt, params)
    deltas: dict[str, list[str]] = {rid: [] for rid in requests}
    final: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            deltas[out.request_id].append(out.outputs[0].delta_text)
            if out.finished:
                final[out.request_id] = out
    return {rid: (deltas[rid], final[rid]) for rid in requests}


def _chat_prompt(llm: LLM, text: str) -> dict:
    rendered = llm.tokenizer.apply_chat_template(_conversation(text))
    return {"prompt": rendered, "prompt_token_ids": llm.tokenizer.encode(rendered, add_special_tokens=False)}


def test_utf8_streaming_never_splits_characters(llm) -> None:
    requests = {
        "repeat": _chat_prompt(llm, 'Repeat exactly: "🙂🚀 你好世界"'),
        "emoji": _chat_prompt(llm, "Reply with only emoji."),  # runs out of tokens mid-character
    }
    results = _stream(llm, requests)
    for request_id, (deltas, final) in results.items():
        completion = final.outputs[0]
        assert "".join(deltas) == completion.text == llm.tokenizer.decode(completion.token_ids), request_id
        # Characters really were split over tokens here, so the test exercises the hold-back.
        assert any("\ufffd" in llm.tokenizer.decode([t]) for t in completion.token_ids), request_id
        # Only the final flush of a sequence cut off mid-character may carry a replacement character.
        assert not any("\ufffd" in d for d in deltas[:-1]), request_id
    repeat = results["repeat"][1].outputs[0].text
    assert "🙂🚀" in repeat and "你好世界" in repeat
    assert "\ufffd" not in repeat


def test_logprobs_shapes(llm) -> None:
    completion = llm.generate("Once upon a time", SamplingParams(temperature=0.0, max_tokens=8, logprobs=5))[0]
    completion = completion.outputs[0]
    assert completion.logprobs is not None
    assert len(completion.logprobs) == len(completion.token_ids) == 8
    for token_id, entry in zip(completion.token_ids, completion.logprobs, strict=True):
        assert entry.token_id == token_id
        assert entry.rank == 1  # greedy picks the most likely token
        assert len(entry.top) == 5
        assert entry.top[0] == (token_id, pytest.approx(entry.logprob))
        values = [lp for _, lp in entry.top]
        assert values == sorted(values, reverse=True)
        assert all(lp <= 0.0 and math.isfinite(lp) for lp in values)
        assert len({tid for tid, _ in entry.top}) == 5


def test_generate_plain_string(llm) -> None:
    prompt = "The three primary colors are"
    out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=12))[0]
    assert out.finished and out.prompt == prompt
    assert out.prompt_token_ids == llm.tokenizer.encode(prompt)
    completion = out.outputs[0]
    assert completion.finish_reason == "length" and len(completion.token_ids) == 12
    assert completion.text.strip()
    assert completion.text == llm.tokenizer.decode(completion.token_ids)


def test_n2_seeded_sampling(llm) -> None:
    params = SamplingParams(n=2, temperature=1.0, seed=1234, max_tokens=16)
    first = llm.generate("My favourite animal is", params)[0]
    assert [c.index for c in first.outputs] == [0, 1]
    assert all(len(c.token_ids) >= 1 and c.finish_reason in ("stop", "length") for c in first.outputs)
    assert first.outputs[0].token_ids != first.outputs[1].token_ids
    again = llm.generate("My favourite animal is", params)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in first.outputs]


# --- bf16 ---------------------------------------------------------------------------------------------


def test_bf16_answers_the_capital_of_france_as_float32_does() -> None:
    """bf16 logits used to tie in the LM head's bf16 output, and the greedy answer went astray
    ("L'Étoile, la Marseillaise, ..."); with float32 logits it is the model's own answer."""
    llm = LLM(dtype="bfloat16", num_threads=THREADS)
    [output] = llm.chat([_conversation("What is the capital of France?")], GREEDY)
    assert "Paris" in output.outputs[0].text
