"""Startup time: process start to "ready to generate" (model loaded and one 1-token generation done).

Each run is a fresh subprocess, so imports, file reads and first-call warm-up all count. The peer is
transformers' own GGUF path (tokenizer + de-quantized model from the same file, then `generate`).

    python benchmarks/startup_time.py [--repeats 3] [--threads N] [--model PATH.gguf]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Kept light on purpose: this module is also the child, whose clock starts before any heavy import.
PROMPT = "The capital of France is"
PHASES = ("python", "import", "load", "first_token")


def _child_ours(model: str | None, threads: int) -> dict[str, float]:
    marks = {"start": time.time()}
    from llmserve import LLM, SamplingParams

    marks["import"] = time.time()
    llm = LLM(model, num_threads=threads)
    marks["load"] = time.time()
    llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=1))
    marks["first_token"] = time.time()
    return marks


def _child_transformers(model: str | None, threads: int) -> dict[str, float]:
    marks = {"start": time.time()}
    import torch
    import transformers

    from llmserve.model.embedded import embedded_model_path

    marks["import"] = time.time()
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    path = Path(model) if model else embedded_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    net = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    marks["load"] = time.time()
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        net.generate(**inputs, max_new_tokens=1, do_sample=False)
    marks["first_token"] = time.time()
    return marks


CHILDREN = {"llmserve": _child_ours, "transformers": _child_transformers}


def run_child(engine: str, model: str | None, threads: int) -> dict[str, float]:
    """Seconds from spawning a fresh interpreter to each phase's end, measured in that interpreter."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", engine, "--threads", str(threads)]
    if model:
        command += ["--model", model]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    spawned = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{engine} child failed:\n{result.stderr[-2000:]}")
    marks = json.loads(result.stdout.strip().splitlines()[-1])
    return _phases(spawned, marks)


def _phases(spawned: float, marks: dict[str, float]) -> dict[str, float]:
    ends = [marks["start"], marks["import"], marks["load"], marks["first_token"]]
    starts = [spawned, *ends[:-1]]
    phases = {name: end - begin for name, begin, end in zip(PHASES, starts, ends, strict=True)}
    phases["ready"] = marks["first_token"] - spawned
    return phases


def _median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _report(name: str, runs: list[dict[str, float]]) -> dict[str, float]:
    med = _median_phases(runs)
    every = ", ".join(f"{r['ready']:.2f}" for r in runs)
    print(f"{name:>12}: ready in {med['ready']:.2f}s median (runs: {every})")
    breakdown = "  ".join(f"{phase} {med[phase]:.2f}s" for phase in PHASES)
    print(f"{'':>12}  {breakdown}")
    return med


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=_cores(), help="torch threads for both (default: all cores)")
    parser.add_argument("--model", default=None, help="a .gguf file (default: the embedded SmolLM2)")
    parser.add_argument("--skip-peer", action="store_true", help="time llmserve only")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.model, args.threads)))
        return 0
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    print(f"startup to first token, {args.repeats} fresh processes each, {args.threads} thread(s), "
          f"{_cores()} core(s)")
    ours = _report("llmserve", [run_child("llmserve", args.model, args.threads) for _ in range(args.repeats)])
    if args.skip_peer:
        return 0
    peer = _report("transformers",
                   [run_child("transformers", args.model, args.threads) for _ in range(args.repeats)])
    print(f"ratio: transformers / llmserve = {peer['ready'] / ours['ready']:.2f}x "
          f"(load alone: {peer['load'] / ours['load']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
