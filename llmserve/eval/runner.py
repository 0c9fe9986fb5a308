"""Runs every setting of an eval in its own process, baseline first, and collects the results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmserve.eval.report import EvalRow, compare
from llmserve.eval.settings import EvalSetting


@dataclass
class EvalOptions:
    model: str | None = None
    text: str | None = None  # None: the public-domain sample the package ships
    window: int = 512  # tokens per perplexity window
    max_tokens: int = 32  # greedy tokens per prompt for the match rate
    decode_tokens: int = 64  # timed decode steps per batch size
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16])
    threads: int | None = None
    device: str = "cpu"


def run_eval(settings: list[EvalSetting], options: EvalOptions,
             progress: Callable[[str], object] = lambda _: None) -> tuple[list[EvalRow], dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="llmserve-eval-") as tmp:
        for i, setting in enumerate(settings):
            progress(f"[{i + 1}/{len(settings)}] {setting.label}")
            results.append(_run_one(setting, options, Path(tmp), i))
    return compare(results), _meta(options)


def _run_one(setting: EvalSetting, options: EvalOptions, tmp: Path, index: int) -> dict:
    spec = {"setting": setting.to_dict(), "model": options.model, "text": options.text, "window": options.window,
            "max_tokens": options.max_tokens, "decode_tokens": options.decode_tokens,
            "batch_sizes": options.batch_sizes, "threads": options.threads, "device": options.device}
    spec_path, out_path = tmp / f"spec{index}.json", tmp / f"out{index}.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "llmserve.eval.worker", str(spec_path), str(out_path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise RuntimeError(f"eval of {setting.label} failed: {message}")
    return json.loads(out_path.read_text())


def _meta(options: EvalOptions) -> dict:
    return {"model": options.model or "embedded SmolLM2-135M-Instruct (GGUF)", "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": options.threads or os.cpu_count(), "device": options.device,
            "device_name": _device_name(options.device), "window": options.window,
            "greedy_tokens": options.max_tokens, "decode_tokens": options.decode_tokens}


def _device_name(device: str) -> str:
    """e.g. 'cuda:0 (NVIDIA H200)', or 'cpu (x86_64)'."""
    if torch.device(device).type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{device} ({platform.processor() or platform.machine()})"
