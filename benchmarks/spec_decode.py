"""Speculative decoding (n-gram prompt lookup) against plain decoding, batch 1, on the embedded model.

Three workloads, each request run alone (batch 1):
- input-grounded: chat prompts that ask to repeat, correct or extract from a passage given in the
  prompt, so the answer quotes it (where prompt lookup should pay);
- random: prompts of random token ids with `ignore_eos` (the bench's random dataset); greedy, this
  model falls into loops on them, which prompt lookup then copies;
- random-sampled: the same at temperature 1, where the model rarely repeats itself: drafts are few
  and mostly rejected, so it shows what speculation costs where it cannot help (low-acceptance
  requests stop drafting).
Both engines are built once; each repeat runs the workload on each of them in turn, and the medians
over repeats of output tokens/s are printed with their ratio, the acceptance rate and, for the greedy
ones, whether the outputs are token-identical (they must be: greedy speculation is exact).

    python benchmarks/spec_decode.py [--repeats 3] [--k 4] [--lookup-max 4] [--lookup-min 2] [--threads N]
                                     [--workloads input-grounded,random,random-sampled]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmserve import LLM, SamplingParams  # noqa: E402

PASSAGES = [
    "The old lighthouse stood at the edge of the cliff for more than a century. Every night its keeper climbed "
    "the spiral stairs, trimmed the wick and watched the beam sweep across the dark water, warning ships away "
    "from the rocks below.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make glucose "
    "and oxygen. It takes place mainly in the leaves, inside small structures called chloroplasts, which hold "
    "the green pigment chlorophyll.",
    "To reset the router, unplug it from the wall, wait thirty seconds, and plug it back in. If the lights do "
    "not turn green after two minutes, press the reset button on the back for ten seconds and set up the "
    "network again from the start.",
    "Maria opened the bakery at six in the morning. She baked bread, croissants and two kinds of muffins, then "
    "she cleaned the counter, counted the money in the register and put the first loaves in the window.",
]
TASKS = [
    "Repeat the following text exactly, word for word:\n\n{passage}",
    "Fix any spelling mistakes in this text and write it out in full:\n\n{typos}",
    "Copy the text below, then nothing else:\n\n{passage}",
]


def _typos(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), k=max(1, len(words) // 12)):
        word = words[i]
        if len(word) > 3:
            j = rng.randrange(1, len(word) - 1)
            words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    return " ".join(words)


def grounded_prompts(llm: LLM, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    prompts = []
    for task in TASKS:
        for passage in PASSAGES:
            content = task.format(passage=passage, typos=_typos(passage, rng))
            prompts.append(llm.tokenizer.render_chat([{"role": "user", "content": content}]))
    return prompts


def random_prompts(vocab_size: int, count: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab_size) for _ in range(length)] for _ in range(count)]


def run(llm: LLM, prompts: list, params: SamplingParams) -> tuple[float, list[list[int]]]:
    """Output tokens/s over the prompts run one at a time, and their tokens."""
    outputs, tokens, start = [], 0, time.perf_counter()
    for prompt in prompts:
        out = llm.generate(prompt, params)[0].outputs[0]
        outputs.append(out.token_ids)
        tokens += len(out.token_ids)
    return tokens / (time.perf_counter() - start), outputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--lookup-max", type=int, default=4)
    parser.add_argument("--lookup-min", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--random-prompts", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--workloads", default="input-grounded,random,random-sampled",
                        help="comma-separated: input-grounded, random, random-sampled")
    args = parser.parse_args(argv)
    common = dict(num_threads=args.threads, dtype=args.dtype, max_model_len=2048)
    spec_config = {"method": "ngram", "num_speculative_tokens": args.k, "prompt_lookup_max": args.lookup_max,
                   "prompt_lookup_min": args.lookup_min}
    engines = {"plain": LLM(**common), "ngram": LLM(**common, speculative_config=spec_config)}
    vocab = engines["plain"].engine.model_config.vocab_size
    workloads = {
        "input-grounded": (grounded_prompts(engines["plain"]), SamplingParams(temperature=0.0,
                                                                              max_tokens=args.max_tokens)),
        "random": (random_prompts(vocab, args.random_prompts, 128),
                   SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)),
        # Sampled at temperature 1 the model rarely repeats itself: drafts are few and mostly rejected,
        # so this is what speculation costs where it cannot help.
        "random-sampled": (random_prompts(vocab, args.random_prompts, 128, seed=1),
                           SamplingParams(temperature=1.0, seed=0, max_tokens=args.max_tokens, ignore_eos=True)),
    }
    workloads = {name: workloads[name] for name in args.workloads.split(",")}
    print(f"K={args.k}, lookup {args.lookup_min}..{args.lookup_max}, {args.repeats} repeats, batch 1")
    for name, (prompts, params) in workloads.items():
        rates: dict[str, list[float]] = {mode: [] for mode in engines}
        outputs: dict[str, list[list[int]]] = {}
        run(engines["plain"], prompts[:1], params)  # warm-up, outside the timings
        run(engines["ngram"], prompts[:1], params)
        stats = engines["ngram"].engine.spec_stats
        drafted, accepted = stats.num_draft_tokens, stats.num_accepted_tokens
        for _ in range(args.repeats):
            for mode, llm in engines.items():
                rate, outputs[mode] = run(llm, prompts, params)
                rates[mode].append(rate)
        drafted, accepted = stats.num_draft_tokens - drafted, stats.num_accepted_tokens - accepted
        plain, ngram = statistics.median(rates["plain"]), statistics.median(rates["ngram"])
        print(f"{name:15s} plain {plain:6.1f} tok/s  ngram {ngram:6.1f} tok/s  ratio {ngram / plain:.2f}x  "
              f"accepted {accepted}/{drafted} drafts ({accepted / max(drafted, 1):.0%})  "
              f"identical: {outputs['plain'] == outputs['ngram'] if params.temperature == 0 else 'n/a (sampled)'}")
        print(f"{'':15s} per repeat plain {[round(r, 1) for r in rates['plain']]}, "
              f"ngram {[round(r, 1) for r in rates['ngram']]}")


if __name__ == "__main__":
    main()
