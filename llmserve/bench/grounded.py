"""The input-grounded dataset: answers that quote the prompt (repeat, correct, extract from a passage).

This is the work where prompt-lookup speculative decoding pays: most of the answer is already in the
prompt. Each request gives a passage of about input_len words and one of three tasks; the passage
is random common words (WORDS), so the dataset needs no files and is fixed by its seed. Prompts
are text or chat: an instruction over token ids would mean nothing to a model.
"""

from __future__ import annotations

import random

from llmserve.bench.workload import BenchRequest

TASKS = (
    "Repeat the following text exactly, word for word, and nothing else:\n\n{passage}",
    "The text below has a few typing mistakes. Write it out again in full with the mistakes fixed:\n\n{typos}",
    "Copy every line of the text below that contains the word \"{word}\", in order:\n\n{lines}",
)
WORDS_PER_LINE = 12


def grounded_requests(num: int, input_len: tuple[int, int], output_len: tuple[int, int], words: tuple[str, ...],
                      form: str, seed: int = 0) -> list[BenchRequest]:
    if form == "ids":
        raise ValueError("the input-grounded dataset is made of instructions: use text or chat prompts")
    rng = random.Random(seed)
    requests = []
    for i in range(num):
        n_in = rng.randint(*input_len)
        passage = [rng.choice(words) for _ in range(n_in)]
        text = _task(i % len(TASKS), passage, rng)
        prompt = [{"role": "user", "content": text}] if form == "chat" else text
        requests.append(BenchRequest(prompt, rng.randint(*output_len), n_in + 24))
    return requests


def _task(kind: int, passage: list[str], rng: random.Random) -> str:
    lines = [" ".join(passage[i:i + WORDS_PER_LINE]) for i in range(0, len(passage), WORDS_PER_LINE)]
    return TASKS[kind].format(passage=" ".join(passage), typos=_typos(passage, rng), word=rng.choice(passage),
                              lines="\n".join(lines))


def _typos(passage: list[str], rng: random.Random) -> str:
    """About one word in ten with two neighbouring letters swapped."""
    words = list(passage)
    for i in range(len(words)):
        word = words[i]
        if len(word) > 3 and rng.random() < 0.1:
            j = rng.randrange(1, len(word) - 2)
            words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    return " ".join(words)
