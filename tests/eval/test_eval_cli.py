"""`llmserve eval` end to end on a tiny model: every setting runs in its own process and lands in one table."""

from __future__ import annotations

import json
import re

import pytest

from llmserve.cli import main
from tests.tiny_models import save_tiny_chat_model


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat")
    save_tiny_chat_model(folder)
    return folder


def test_eval_prints_one_row_per_setting_against_the_fp32_baseline(chat_model, tmp_path, capsys):
    out, table = tmp_path / "eval.json", tmp_path / "eval.md"
    text = tmp_path / "text.txt"
    text.write_text("It was the best of times, it was the worst of times. " * 12)
    assert main(["eval", "--model", str(chat_model), "-q", "none,int8,w8a8+lm_head", "--dtype", "bfloat16",
                 "--text", str(text), "--window", "64", "--max-tokens", "4", "--decode-tokens", "4",
                 "--batch-sizes", "1,3", "--json", str(out), "--markdown", str(table)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["label"] for r in rows] == ["float32", "bfloat16", "int8 (bfloat16)", "w8a8 skip=lm_head (bfloat16)"]
    base = rows[0]
    assert base["top1_agreement"] == 1.0 and base["greedy_exact_match"] == 1.0 and base["perplexity_change"] == 0
    assert rows[1]["weights_vs_fp32"] == pytest.approx(0.5, abs=0.01)
    assert rows[2]["weights_vs_fp32"] < 0.3  # int8 with the tied embedding as int8 rows
    assert rows[3]["weights_vs_fp32"] > rows[2]["weights_vs_fp32"]  # the skipped head keeps its bf16 bytes
    for row in rows:
        assert 1.0 < row["perplexity"] < 1e6
        assert 0.0 <= row["top1_agreement"] <= 1.0
        assert set(row["decode"]) == {"1", "3"}
        assert all(d["tokens_per_second"] > 0 and d["p50_ms"] <= d["p99_ms"] for d in row["decode"].values())
        assert row["peak_rss_mib"] > 50
    printed = capsys.readouterr().out
    assert printed == table.read_text() + "\n"
    table_lines = printed.split("\n\n")[0].splitlines()
    assert len(table_lines) == 2 + 4  # header, rule, four settings
    assert "Decode throughput relative to bfloat16" in printed
    assert "Decode throughput relative to bfloat16 on cpu (" in printed  # the device it ran on
    ratio_rows = [line for line in printed.splitlines()
                  if re.fullmatch(r"\| .+ \| \d+\.\d\dx \| \d+\.\d\dx \| [+-]\d+\.\d\d% \|", line)]
    assert len(ratio_rows) == 3  # every setting but bfloat16 itself, batch 1 and batch 3, perplexity cost


def test_eval_refuses_a_setting_the_device_cannot_run_before_running_any(chat_model, capsys):
    assert main(["eval", "--model", str(chat_model), "-q", "int8,fp8"]) == 2
    captured = capsys.readouterr()
    assert "fp8 needs a CUDA GPU" in captured.err and "[1/" not in captured.err


@pytest.mark.parametrize("flags", [["--batch-sizes", "1,0"], ["--batch-sizes", "4,4"], ["--window", "1"]])
def test_eval_refuses_bad_options_before_running_anything(chat_model, flags, capsys):
    assert main(["eval", "--model", str(chat_model), *flags]) == 2
    assert "llmserve: error:" in capsys.readouterr().err


def test_eval_refuses_an_already_quantized_model(chat_model, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(chat_model), "-q", "int8", "--out", str(out)]) == 0
    assert main(["eval", "--model", str(out)]) == 2
    assert "already quantized; run eval on the model it was quantized from" in capsys.readouterr().err


def test_eval_reports_a_setting_that_fails_in_its_process(chat_model, capsys):
    # Only the worker finds out: an explicit group size that the model's 64-wide layers cannot take.
    assert main(["eval", "--model", str(chat_model), "-q", "int4", "--quant-group-size", "128",
                 "--batch-sizes", "1", "--decode-tokens", "2", "--max-tokens", "1"]) == 1
    # The dtype in the label is the machine's default (bf16 with AVX-512 BF16, else fp32).
    expected = r"eval of int4 g=128 \((bfloat16|float32)\) failed: ValueError: int4 group size 128 does not divide"
    assert re.search(expected, capsys.readouterr().err)
