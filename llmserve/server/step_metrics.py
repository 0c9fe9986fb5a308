"""Engine-step metrics, read from the engine's stats at scrape time: batching efficiency (tokens and
sequences per step), preemptions, the KV cache's configuration, and model bandwidth utilisation.

Names follow vLLM where it has one: `iteration_tokens_total` (a histogram despite its suffix),
`num_preemptions_total`, `cache_config_info`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from llmserve.engine.outputs import EngineStats

PREFIX = "llmserve:"
# vLLM's buckets for iteration_tokens_total.
TOKENS_PER_STEP_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
SEQS_PER_STEP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def histogram_samples(counts: dict[int, int], bounds: tuple[int, ...]) -> tuple[list[tuple[str, float]], float]:
    """Exact {value: occurrences} -> cumulative Prometheus buckets (+Inf last) and the sum of values."""
    buckets = [(str(float(bound)), float(sum(n for value, n in counts.items() if value <= bound)))
               for bound in bounds]
    buckets.append(("+Inf", float(sum(counts.values()))))
    return buckets, float(sum(value * n for value, n in counts.items()))


class StepMetrics(Collector):
    """`bandwidth()` is the device's memory bandwidth in bytes/s (measured or given), None if unknown."""

    def __init__(self, model_name: str, stats: Callable[[], EngineStats | None],
                 bandwidth: Callable[[], float | None]) -> None:
        self.model_name = model_name
        self.stats = stats
        self.bandwidth = bandwidth

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        stats = self.stats()
        if stats is None:  # the engine is still loading: nothing to say about its steps yet
            return
        labels = [self.model_name]
        steps = stats.steps
        for name, doc, counts, bounds in (
            ("iteration_tokens_total", "Tokens run through the model per engine step (prompt chunks and decodes).",
             steps.tokens_per_step, TOKENS_PER_STEP_BUCKETS),
            ("iteration_sequences", "Sequences in the batch per engine step.", steps.seqs_per_step,
             SEQS_PER_STEP_BUCKETS),
        ):
            histogram = HistogramMetricFamily(PREFIX + name, doc, labels=["model_name"])
            buckets, total = histogram_samples(counts, bounds)
            histogram.add_metric(labels, buckets, total)
            yield histogram
        preemptions = CounterMetricFamily(PREFIX + "num_preemptions", "Requests preempted (their KV freed, "
                                          "recomputed later) for KV room or a higher class.", labels=["model_name"])
        preemptions.add_metric(labels, float(steps.num_preemptions))
        yield preemptions
        yield from self._info(stats)
        yield from self._bandwidth(stats)

    def _info(self, stats: EngineStats) -> Iterator[GaugeMetricFamily]:
        keys = sorted(stats.cache_config)
        info = GaugeMetricFamily(PREFIX + "cache_config_info", "The KV cache's configuration (always 1).",
                                 labels=["model_name", *keys])
        info.add_metric([self.model_name, *(stats.cache_config[k] for k in keys)], 1.0)
        yield info

    def _bandwidth(self, stats: EngineStats) -> Iterator[GaugeMetricFamily]:
        weights = GaugeMetricFamily(PREFIX + "model_weight_bytes", "Model-weight bytes one engine step reads.",
                                    labels=["model_name"])
        weights.add_metric([self.model_name], float(stats.weight_bytes_per_step))
        yield weights
        bandwidth = self.bandwidth()
        if bandwidth is None:
            return
        peak = GaugeMetricFamily(PREFIX + "memory_bandwidth_bytes_per_second",
                                 "The device's memory bandwidth (a measured copy, or --memory-bandwidth).",
                                 labels=["model_name"])
        peak.add_metric([self.model_name], bandwidth)
        yield peak
        read = stats.weight_bytes_per_step * stats.steps.recent_steps_per_second
        mbu = GaugeMetricFamily(PREFIX + "model_bandwidth_utilization",
                                "Model-weight bytes read per second over the last 10 s, over the memory "
                                "bandwidth (0-1; KV reads are not counted).", labels=["model_name"])
        mbu.add_metric([self.model_name], read / bandwidth)
        yield mbu
