"""Benchmark datasets: random prompts, a JSONL file of prompts or conversations, a shared prefix, and
input-grounded instructions (bench/grounded.py).

The bench speaks only HTTP and has no tokenizer, so text lengths are estimates: random text is
made of common English words that are one token each in Llama-family vocabularies, and file
prompts count ~4 characters per token. Reports use the server's own usage counts wherever it
sends them.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmserve.bench.grounded import grounded_requests
from llmserve.bench.workload import FIRST_PLAIN_TOKEN_ID, BenchRequest, Message, random_requests

# ids: token-id prompts (exact lengths; /v1/completions of vLLM, llama.cpp and ours take them);
# text: word prompts for servers that only take strings; chat: text as conversations for /v1/chat/completions.
PromptForm = Literal["ids", "text", "chat"]
DATASET_KINDS = ("random", "shared-prefix", "input-grounded", "jsonl:PATH")
CHARS_PER_TOKEN = 4
# Each is a single token (with its leading space) in the SmolLM2, Llama and Mistral vocabularies.
_WORD_TEXT = (
    "the of and to in is that it for was on are as with his they at be this from have or by one had not but what "
    "all were when we there can an your which their said if do will each about how up out them then she many some "
    "so these would other into has more her two like him see time could no make than first been its who now people "
    "my made over did down only way find use may water long little very after words called just where most know "
    "get through back much before go good new write our used me man too any day same right look think also around "
    "another came come work three word must because does part even place well such here take why things help put "
    "years different away again off went old number great tell men say small every found still between name should "
    "home big give air line set own under read last never us left end along while might next sound below saw "
    "something thought both few those always looked show large often together asked house world going want school"
)
WORDS = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class DatasetSpec:
    kind: str  # "random", "shared-prefix" or "jsonl:PATH"
    num_prompts: int
    input_len: tuple[int, int] = (128, 128)  # the question after the prefix, for shared-prefix
    output_len: tuple[int, int] = (128, 128)  # jsonl: only for lines that give no length of their own
    prefix_len: int = 1024
    num_prefixes: int = 1
    vocab_size: int = 32000  # token ids stay below it: 32000 is inside every Llama-family vocabulary
    form: PromptForm = "ids"
    seed: int = 0


def load_dataset(spec: DatasetSpec) -> list[BenchRequest]:
    if spec.num_prompts < 1:
        raise ValueError(f"--num-prompts must be at least 1, got {spec.num_prompts}")
    if spec.kind == "random":
        if spec.form == "ids":
            return random_requests(spec.num_prompts, spec.input_len, spec.output_len, spec.vocab_size, spec.seed)
        return random_text_requests(spec.num_prompts, spec.input_len, spec.output_len, spec.seed)
    if spec.kind == "shared-prefix":
        return shared_prefix_requests(spec)
    if spec.kind == "input-grounded":
        return grounded_requests(spec.num_prompts, spec.input_len, spec.output_len, WORDS, spec.form, spec.seed)
    if spec.kind.startswith("jsonl:"):
        return jsonl_requests(Path(spec.kind.removeprefix("jsonl:")), spec.num_prompts, spec.output_len, spec.seed)
    raise ValueError(f"unknown dataset {spec.kind!r}; expected one of {', '.join(DATASET_KINDS)}")


def random_words(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def random_text_requests(num: int, input_len: tuple[int, int], output_len: tuple[int, int],
                         seed: int = 0) -> list[BenchRequest]:
    rng = random.Random(seed)
    requests = []
    for _ in range(num):
        n_in = rng.randint(*input_len)
        requests.append(BenchRequest(random_words(rng, n_in), rng.randint(*output_len), n_in))
    return requests


def shared_prefix_requests(spec: DatasetSpec) -> list[BenchRequest]:
    """`num_prefixes` long system prompts, each shared by its share of the requests, plus a short question.

    Request i uses prefix i % num_prefixes, so every prefix is seen early and then reused.
    """
    if spec.prefix_len < 1 or spec.num_prefixes < 1:
        raise ValueError("--prefix-len and --num-prefixes must be at least 1")
    rng = random.Random(spec.seed)
    prefixes: list[Any] = []
    for _ in range(spec.num_prefixes):
        if spec.form == "ids":
            prefixes.append([rng.randrange(FIRST_PLAIN_TOKEN_ID, spec.vocab_size) for _ in range(spec.prefix_len)])
        else:
            prefixes.append(random_words(rng, spec.prefix_len))
    requests = []
    for i in range(spec.num_prompts):
        n_in = rng.randint(*spec.input_len)
        n_out = rng.randint(*spec.output_len)
        prefix = prefixes[i % spec.num_prefixes]
        prompt: str | list[int] | list[Message]
        if spec.form == "ids":
            prompt = prefix + [rng.randrange(FIRST_PLAIN_TOKEN_ID, spec.vocab_size) for _ in range(n_in)]
        elif spec.form == "text":
            prompt = prefix + "\n\n" + random_words(rng, n_in)
        else:
            prompt = [{"role": "system", "content": prefix}, {"role": "user", "content": random_words(rng, n_in)}]
        requests.append(BenchRequest(prompt, n_out, spec.prefix_len + n_in))
    return requests


def jsonl_requests(path: Path, num: int, output_len: tuple[int, int], seed: int = 0) -> list[BenchRequest]:
    """Requests from a JSONL file (or a JSON array), shuffled by `seed`, repeated if `num` exceeds the file.

    A line is {"prompt": "..."}, {"messages": [{"role", "content"}, ...]}, or ShareGPT's
    {"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}, ...]}, whose first human
    turn is the prompt and whose first reply sets the output length, as vLLM's ShareGPT dataset does.
    "max_tokens" or "output_len" on a line sets its output length; else --output-len does.
    """
    records = _read_records(path)
    rng = random.Random(seed)
    requests = [_record_request(record, rng, output_len, f"{path} item {n}") for n, record in enumerate(records, 1)]
    if not requests:
        raise ValueError(f"{path} holds no prompts")
    rng.shuffle(requests)
    return [requests[i % len(requests)] for i in range(num)]


def _read_records(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read dataset {path}: {exc.strerror or exc}") from None
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSONL: {exc}") from None
    return records if isinstance(records, list) else [records]


def _record_request(record: Any, rng: random.Random, output_len: tuple[int, int], where: str) -> BenchRequest:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    prompt: str | list[Message]
    reply = ""
    if isinstance(record.get("prompt"), str):
        prompt = record["prompt"]
    elif isinstance(record.get("messages"), list):
        prompt = _messages(record["messages"], where)
    elif isinstance(record.get("conversations"), list):
        prompt, reply = _sharegpt_turns(record["conversations"], where)
    else:
        raise ValueError(f"{where}: needs a 'prompt' string, a 'messages' list or ShareGPT 'conversations'")
    chars = len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)
    if chars == 0:
        raise ValueError(f"{where}: the prompt is empty")
    n_out = record.get("max_tokens", record.get("output_len"))
    if n_out is None:
        n_out = _estimate_tokens(len(reply)) if reply else rng.randint(*output_len)
    if not isinstance(n_out, int) or n_out < 1:
        raise ValueError(f"{where}: the output length must be a positive integer, got {n_out!r}")
    return BenchRequest(prompt, n_out, _estimate_tokens(chars))


def _messages(messages: list[Any], where: str) -> list[Message]:
    out = []
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: each message needs string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    if not out:
        raise ValueError(f"{where}: 'messages' is empty")
    return out


def _sharegpt_turns(turns: list[Any], where: str) -> tuple[str, str]:
    """(first human turn, first reply after it)."""
    values = [(t.get("from"), t.get("value")) for t in turns if isinstance(t, dict)]
    human = next((i for i, (who, text) in enumerate(values) if who in ("human", "user") and isinstance(text, str)),
                 None)
    if human is None:
        raise ValueError(f"{where}: the conversation has no human turn")
    reply = next((text for who, text in values[human + 1:] if who in ("gpt", "assistant") and isinstance(text, str)),
                 "")
    return values[human][1], reply


def _estimate_tokens(chars: int) -> int:
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))
