"""One `llmserve eval` setting, run in a process of its own so its peak RSS is its own.

    python -m llmserve.eval.worker SPEC.json OUT.json
"""

from __future__ import annotations

import json
import resource
import sys
import time
from importlib import resources
from pathlib import Path

from llmserve.eval.latency import measure_decode
from llmserve.eval.scoring import score_text
from llmserve.eval.settings import EvalSetting
from llmserve.quant.apply import weights_nbytes
from llmserve.sampling_params import SamplingParams


def sample_text() -> str:
    return resources.files("llmserve.eval").joinpath("data/pride_and_prejudice.txt").read_text()


def sample_prompts() -> list[str]:
    return json.loads(resources.files("llmserve.eval").joinpath("data/prompts.json").read_text())


def run_setting(spec: dict) -> dict:
    """spec: setting, model, text (None: the shipped sample), window, max_tokens, decode_tokens,
    batch_sizes, threads."""
    from llmserve.llm import LLM

    setting = EvalSetting.from_dict(spec["setting"])
    start = time.perf_counter()
    llm = LLM(spec["model"], kv_cache_memory="512MiB", num_threads=spec.get("threads"),
              enable_prefix_caching=False, device=spec.get("device", "cpu"), **setting.engine_kwargs())
    load_seconds = time.perf_counter() - start
    engine = llm.engine
    if engine.tokenizer is None:
        raise ValueError("eval needs a model with a tokenizer")
    text_ids = engine.tokenizer.encode(spec["text"] or sample_text())
    if len(text_ids) < 2:
        raise ValueError("the eval text must have at least 2 tokens")
    scores = score_text(engine.runner.model, engine.model_config, engine.dtype, engine.backend, text_ids,
                        min(spec["window"], engine.max_model_len))
    greedy = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    prompts = [[{"role": "user", "content": p}] for p in sample_prompts()]
    outputs = llm.chat(prompts, greedy)
    decode = {}
    for batch_size in spec["batch_sizes"]:
        timing = measure_decode(engine, text_ids[:128], batch_size, spec["decode_tokens"])
        decode[str(batch_size)] = {"step_seconds": timing.step_seconds, "tokens_per_second": timing.tokens_per_second}
    return {
        "setting": setting.to_dict(),
        "label": EvalSetting(setting.dtype, engine.quant).label,  # what was loaded, e.g. int4's group size
        "quant_specs": engine.quant_specs,
        "load_seconds": load_seconds,
        "weights_bytes": weights_nbytes(engine.runner.model),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "nll_sum": scores.nll_sum,
        "num_scored": scores.num_scored,
        "perplexity": scores.perplexity,
        "top1": scores.top1,
        "greedy": [o.outputs[0].token_ids for o in outputs],
        "decode": decode,
    }


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    result = run_setting(json.loads(Path(spec_path).read_text()))
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
