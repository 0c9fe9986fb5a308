"""Turns the per-setting results into rows against the baseline, as JSON and as a Markdown table."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llmserve.bench.stats import percentile

MIB = 1 << 20


@dataclass
class EvalRow:
    label: str
    weights_mib: float
    weights_vs_fp32: float  # fraction of the baseline's weight bytes
    peak_rss_mib: float
    load_seconds: float
    perplexity: float
    perplexity_change: float  # relative to the baseline, e.g. 0.004 = +0.4%
    top1_agreement: float
    greedy_exact_match: float  # share of prompts whose whole greedy output equals the baseline's
    greedy_prefix_match: float  # mean share of each output that matches before the first difference
    decode: dict[str, dict[str, float]]  # batch size -> p50/p90/p99 ms per token, tokens/s


def compare(results: list[dict]) -> list[EvalRow]:
    """`results[0]` is the baseline."""
    base = results[0]
    return [_row(r, base) for r in results]


def _row(result: dict, base: dict) -> EvalRow:
    agree = sum(a == b for a, b in zip(result["top1"], base["top1"], strict=True)) / len(base["top1"])
    prefix = [_common_prefix(a, b) / max(len(b), 1) for a, b in zip(result["greedy"], base["greedy"], strict=True)]
    exact = sum(a == b for a, b in zip(result["greedy"], base["greedy"], strict=True)) / len(base["greedy"])
    decode = {}
    for batch, timing in result["decode"].items():
        ms = [s * 1000 for s in timing["step_seconds"]]
        decode[batch] = {"p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
                         "tokens_per_second": timing["tokens_per_second"]}
    return EvalRow(
        label=result["label"], weights_mib=result["weights_bytes"] / MIB,
        weights_vs_fp32=result["weights_bytes"] / base["weights_bytes"],
        peak_rss_mib=result["peak_rss_bytes"] / MIB, load_seconds=result["load_seconds"],
        perplexity=result["perplexity"], perplexity_change=result["perplexity"] / base["perplexity"] - 1,
        top1_agreement=agree, greedy_exact_match=exact, greedy_prefix_match=sum(prefix) / len(prefix),
        decode=decode,
    )


def _common_prefix(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def to_json(rows: list[EvalRow], meta: dict) -> dict:
    return {"meta": meta, "rows": [asdict(r) for r in rows]}


def to_markdown(rows: list[EvalRow], reference: str | None = None, device: str | None = None) -> str:
    """The table, then each setting against the `reference` row (the unquantized model in the
    compared dtype, e.g. bf16 on a GPU): its decode throughput (above 1.00x beats it on this device)
    and what it costs in perplexity."""
    table = _table(rows)
    ref = next((r for r in rows if r.label == reference), None)
    if ref is None or len(rows) < 3:
        return table if device is None else table + f"\nDevice: {device}\n"
    batches = list(ref.decode)
    where = f" on {device}" if device else ""
    lines = ["", f"Decode throughput relative to {ref.label}{where} (above 1.00x is faster), and perplexity "
             f"against {ref.label}'s:", "",
             "| setting | " + " | ".join(f"batch {b}" for b in batches) + f" | perplexity vs {ref.label} |",
             "|" + "---|" * (len(batches) + 2)]
    for r in rows:
        if r is not ref:
            ratios = [r.decode[b]["tokens_per_second"] / ref.decode[b]["tokens_per_second"] for b in batches]
            cost = r.perplexity / ref.perplexity - 1
            lines.append(f"| {r.label} | " + " | ".join(f"{x:.2f}x" for x in ratios) + f" | {cost:+.2%} |")
    return table + "\n".join(lines) + "\n"


def _table(rows: list[EvalRow]) -> str:
    batches = list(rows[0].decode)
    head = ["setting", "weights MiB (vs fp32)", "peak RSS MiB", "perplexity (change)", "top-1 agree",
            "greedy exact / prefix"]
    for b in batches:
        head += [f"batch {b}: ms/token p50 / p90 / p99", f"batch {b}: tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.label, f"{r.weights_mib:.1f} ({r.weights_vs_fp32:.1%})", f"{r.peak_rss_mib:.0f}",
                 f"{r.perplexity:.3f} ({r.perplexity_change:+.2%})", f"{r.top1_agreement:.2%}",
                 f"{r.greedy_exact_match:.0%} / {r.greedy_prefix_match:.0%}"]
        for b in batches:
            d = r.decode[b]
            cells += [f"{d['p50_ms']:.1f} / {d['p90_ms']:.1f} / {d['p99_ms']:.1f}", f"{d['tokens_per_second']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
