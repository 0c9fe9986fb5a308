"""`llmserve chat` and the sampling flags it shares with `generate`.

Chat samples with the model's own defaults, as vLLM's `--generation-config auto` does: the keys its
generation_config.json sets (HF folders often have one; GGUF files and the embedded model have
none), else a mild temperature 0.7 and top-p 0.9. Greedy decoding, which `generate` keeps, makes
small chat models loop; a repetition penalty is not a fallback, because it also penalises the
chat template's tokens in the prompt, end-of-turn included, which makes replies run on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llmserve.engine.outputs import CompletionOutput
from llmserve.sampling_params import SamplingParams
from llmserve.terminal import typing_hidden, write_flushed

GREEDY: dict[str, Any] = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
CHAT_FALLBACK: dict[str, Any] = {**GREEDY, "temperature": 0.7, "top_p": 0.9}
# generation_config.json's keys -> ours; the ones vLLM's --generation-config reads
GENERATION_CONFIG_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                          "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_tokens"}
SAMPLING_FLAGS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def add_sampling_args(parser: argparse.ArgumentParser, fallback: Mapping[str, Any], from_model: bool) -> None:
    """The sampling flags. They default to None so that an explicit flag is told from a default:
    `fallback` (with max_tokens) fills what neither the flag nor, with `from_model`, the model sets."""
    group = parser.add_argument_group("sampling")
    source = "the model's generation_config.json, else " if from_model else ""

    def default(key: str) -> str:
        return f"default: {source}{fallback[key]:g}"

    group.add_argument("--max-tokens", type=int, default=None, help=default("max_tokens"))
    group.add_argument("--temperature", type=float, default=None, help=f"0 is greedy ({default('temperature')})")
    group.add_argument("--top-p", type=float, default=None, help=default("top_p"))
    group.add_argument("--top-k", type=int, default=None, help=f"0 is off ({default('top_k')})")
    group.add_argument("--min-p", type=float, default=None, help=default("min_p"))
    group.add_argument("--repetition-penalty", type=float, default=None,
                       help=f"1 is off ({default('repetition_penalty')})")
    group.add_argument("--sampling-seed", type=int, default=None, help="seed for this request's sampling")
    group.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    parser.set_defaults(sampling_fallback=dict(fallback), sampling_from_model=from_model)


def generation_defaults(model: str | None) -> dict[str, Any]:
    """The sampling settings a model's generation_config.json names, in our keys; {} without one."""
    if model is None:
        return {}  # the embedded GGUF file carries none
    path = Path(model).expanduser() / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        return {}
    return {ours: config[theirs] for theirs, ours in GENERATION_CONFIG_KEYS.items()
            if isinstance(config.get(theirs), int | float) and not isinstance(config.get(theirs), bool)}


def sampling_settings(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The settings a command samples with, and where its defaults came from (for the user)."""
    model = generation_defaults(args.model) if args.sampling_from_model else {}
    explicit = {key: getattr(args, key) for key in SAMPLING_FLAGS if getattr(args, key) is not None}
    source = "the model's generation_config.json" if model else "llmserve's defaults"
    return {**args.sampling_fallback, **model, **explicit}, source


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    settings, _ = sampling_settings(args)
    return SamplingParams(**settings, seed=args.sampling_seed, stop=args.stop)


def describe(settings: Mapping[str, Any]) -> str:
    shown = [f"{key} {settings[key]:g}" for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
             if settings[key] != GREEDY[key] or key == "temperature"]
    return ", ".join([*shown, f"up to {settings['max_tokens']} tokens"])


def stream(llm, prompt: str | dict, params: SamplingParams, write: Callable[[str], object]) -> CompletionOutput:
    """Run one request to completion, writing text as it is produced; returns its final output."""
    engine = llm.engine
    request_id = f"cli-{time.monotonic_ns()}"
    engine.add_request(request_id, prompt, params)
    final: CompletionOutput | None = None
    try:
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.request_id != request_id:
                    continue
                if out.error:
                    raise RuntimeError(out.error)
                write(out.outputs[0].delta_text)
                final = out.outputs[0]
    except KeyboardInterrupt:
        engine.abort_request(request_id)
        raise
    if final is None:
        raise RuntimeError("the engine finished the request without an output")
    return final


def run_chat(llm, args: argparse.Namespace) -> int:
    settings, source = sampling_settings(args)
    params = SamplingParams(**settings, seed=args.sampling_seed, stop=args.stop)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    print("llmserve chat: type a message; /reset clears the conversation, /exit or Ctrl-D quits.")
    print(f"sampling: {describe(settings)} ({source}; flags override). Typing while a reply streams is discarded.")
    while True:
        try:
            line = input("\n> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history = list(system)
            continue
        if not line:
            continue
        turn = [*history, {"role": "user", "content": line}]
        reply = _reply(llm, turn, params)
        if reply is not None:
            history = [*turn, {"role": "assistant", "content": reply}]


def _reply(llm, messages: list[dict[str, str]], params: SamplingParams) -> str | None:
    """Stream the answer to `messages`; return it to keep in the history, or None to drop the turn.

    A reply cut off by the token limit is dropped with its question, and the user told so: such a
    reply is often a loop, and kept, it would be the pattern the next answer continues. Dropping
    the question too keeps user and assistant turns alternating, which some chat templates require.
    """
    prompt = llm.tokenizer.render_chat(messages)
    try:
        with typing_hidden(sys.stdin):
            out = stream(llm, prompt, params, write_flushed)
    except KeyboardInterrupt:
        print("\n[interrupted; not kept in the history]")
        return None
    except ValueError as exc:  # e.g. the conversation outgrew the context
        print(f"error: {exc}")
        return None
    if out.finish_reason == "length":
        print(f"\n[cut off at {len(out.token_ids)} tokens; not kept in the history]")
        return None
    return out.text
