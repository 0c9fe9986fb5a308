"""Which rows an eval compares, and how each row is scored against the baseline."""

from __future__ import annotations

import pytest

from llmserve.eval.report import compare, to_markdown
from llmserve.eval.settings import BASELINE, parse_settings
from llmserve.quant.config import QuantConfig


def test_settings_start_with_the_fp32_baseline_and_read_mixed_precision_items():
    settings = parse_settings("none,int8,int4+lm_head+layers.0,w8a8", "bfloat16", group_size=64, skip="layers.29")
    assert settings[0] == BASELINE
    assert [s.label for s in settings] == [
        "float32", "bfloat16", "int8 skip=layers.29 (bfloat16)", "int4 g=64 skip=layers.29,lm_head,layers.0 (bfloat16)",
        "w8a8 skip=layers.29 (bfloat16)"]
    assert settings[2].quant == QuantConfig("int8", None, ("layers.29",))  # the group size is int4's alone


def test_the_unquantized_fp32_row_is_not_run_twice():
    assert parse_settings("none,int8", "float32") == [BASELINE, parse_settings("int8", "float32")[1]]


def test_an_unknown_method_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="unknown quantization 'int2'"):
        parse_settings("int8,int2", "bfloat16")


def _result(label: str, nll: float, top1: list[int], greedy: list[list[int]], steps: list[float],
            weights: int) -> dict:
    return {"label": label, "weights_bytes": weights, "peak_rss_bytes": 300 << 20, "load_seconds": 1.0,
            "perplexity": nll, "top1": top1, "greedy": greedy,
            "decode": {"1": {"step_seconds": steps, "tokens_per_second": len(steps) / sum(steps)}}}


def test_rows_measure_agreement_matches_and_latency_against_the_baseline():
    base = _result("float32", 20.0, [1, 2, 3, 4], [[5, 6, 7, 8], [9, 9]], [0.010] * 10, 400)
    other = _result("int8", 20.2, [1, 2, 0, 4], [[5, 6, 0, 8], [9, 9]],
                    [0.004] * 9 + [0.020], 100)
    rows = compare([base, other])
    assert rows[0].top1_agreement == 1.0 and rows[0].perplexity_change == 0.0
    row = rows[1]
    assert row.top1_agreement == 0.75
    assert row.greedy_exact_match == 0.5
    assert row.greedy_prefix_match == pytest.approx((2 / 4 + 1) / 2)
    assert row.perplexity_change == pytest.approx(0.01)
    assert row.weights_vs_fp32 == 0.25
    decode = row.decode["1"]
    assert decode["p50_ms"] == pytest.approx(4.0) and decode["p99_ms"] > 15.0
    assert decode["tokens_per_second"] == pytest.approx(10 / 0.056)
    table = to_markdown(rows)
    assert table.splitlines()[0].startswith("| setting | weights MiB (vs fp32) |")
    assert "| int8 | 0.0 (25.0%) |" in table and "20.200 (+1.00%)" in table and "75.00%" in table
