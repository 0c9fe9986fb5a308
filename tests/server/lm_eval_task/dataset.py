"""The task's documents: questions.jsonl beside this file, as an in-memory `datasets.DatasetDict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QUESTIONS = Path(__file__).with_name("questions.jsonl")


def load_questions(**_metadata: Any):  # lm-eval passes the task's metadata and dataset_kwargs
    import datasets

    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
