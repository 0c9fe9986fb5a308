"""`llmserve profile` on a tiny random model: what the user reads in the table and the JSON."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from llmserve.cli import main
from llmserve.profiling import categories as cat
from tests.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    folder = tmp_path_factory.mktemp("tiny")
    save_tiny_model("llama", folder)
    out = folder / "profile.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["profile", "--model", str(folder), "--batch", "3", "--context", "20", "--decode-steps", "3",
                     "--threads", "1", "--json", str(out)])
    assert code == 0
    return stdout.getvalue(), json.loads(out.read_text())


def test_shares_sum_to_the_step_wall_time(run: tuple[str, dict]) -> None:
    _, data = run
    assert [p["phase"] for p in data["phases"]] == ["prefill", "decode"]
    for phase in data["phases"]:
        total_ms = sum(part["ms"] for part in phase["parts"])
        assert abs(total_ms - phase["wall_ms"]) <= 0.05 * phase["wall_ms"]
        assert abs(sum(part["share"] for part in phase["parts"]) - 1.0) <= 0.05
        # The timed parts, not the remainder, hold most of a step.
        overhead = next(p for p in phase["parts"] if p["part"] == cat.OVERHEAD)
        assert overhead["ms"] < phase["wall_ms"]


def test_every_part_the_model_uses_is_there_and_not_negative(run: tuple[str, dict]) -> None:
    _, data = run
    for phase in data["phases"]:
        parts = {p["part"]: p for p in phase["parts"]}
        assert set(parts) == set(cat.ALL)
        for part in parts.values():
            assert part["ms"] >= 0 and part["share"] >= 0
        for name in (cat.ATTENTION, cat.LINEARS, cat.NORMS, cat.ACTIVATIONS, cat.ROPE_KV, cat.LOGITS, cat.SAMPLING):
            assert parts[name]["ms"] > 0, name
            if name != cat.SAMPLING:
                assert parts[name]["gflops_per_s"] > 0 and parts[name]["bound"] in ("memory", "compute")
            assert parts[name]["gbytes_per_s"] > 0
    prefill, decode = data["phases"]
    assert (prefill["steps"], prefill["sequences"], prefill["tokens_per_step"]) == (1, 3, 60)
    assert (decode["steps"], decode["sequences"], decode["tokens_per_step"]) == (3, 3, 3)


def test_memory_and_roofline_are_reported(run: tuple[str, dict]) -> None:
    text, data = run
    memory = data["memory"]
    assert memory["weights"] > 0 and memory["kv_pool"] >= memory["kv_in_use"] > 0
    assert data["roofline"]["copy_gb_per_s"] > 0 and data["roofline"]["matmul_gflop_per_s"] > 0
    assert "memory: weights" in text and "roofline: copy" in text
    assert "computed analytically" in text
    assert set(data["profiler_ms"]) <= set(cat.MEASURED) and data["profiler_ms"][cat.LINEARS] > 0


def test_json_holds_the_printed_numbers(run: tuple[str, dict]) -> None:
    text, data = run
    for phase in data["phases"]:
        section = text.split(f"\n{phase['phase']}: ", 1)[1]
        assert f"{phase['wall_ms']:.2f} ms per step" in section.splitlines()[0]
        assert f"unprofiled {phase['unprofiled_wall_ms']:.2f} ms)" in section.splitlines()[0]
        for part in phase["parts"]:
            line = next(row for row in section.splitlines() if row.strip().startswith(part["part"] + "  "))
            cells = re.split(r"\s{2,}", line.strip())
            assert cells[1] == f"{part['ms']:.2f}"
            assert cells[2] == f"{part['share']:.1%}"


@pytest.mark.parametrize("flags, message", [
    (["--batch", "0"], "--batch"),
    (["--context", "many"], "--context"),
    (["--bogus"], "--bogus"),
    (["--device", "tpu"], "tpu"),
    (["--model", "/nonexistent"], "/nonexistent"),
])
def test_a_bad_flag_is_one_line_and_exit_2(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["profile", *flags])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert captured.out == ""


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--dtype", "--quantization", "--device", "--batch", "--context", "--json"):
        assert flag in out


def test_trace_is_written(tmp_path: Path, run: tuple[str, dict]) -> None:
    del run  # only for its model folder's existence: build a fresh one here
    folder = tmp_path / "m"
    save_tiny_model("smollm2", folder)
    trace = tmp_path / "trace.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["profile", "--model", str(folder), "--context", "8", "--decode-steps", "1", "--threads", "1",
                     "--trace", str(trace)]) == 0
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name") == "llmserve::attention" for e in events)
