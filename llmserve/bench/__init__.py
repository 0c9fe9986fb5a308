"""Load generation for OpenAI-compatible servers, over HTTP only.

Nothing here imports torch or the engine, so the same code measures our server, vLLM or llama.cpp.
"""

from llmserve.bench.client import RequestResult, run_load, send_request
from llmserve.bench.stats import Percentiles, Summary, percentile, summarize, wall_duration
from llmserve.bench.workload import BenchRequest, arrival_times, random_requests

__all__ = [
    "BenchRequest",
    "Percentiles",
    "RequestResult",
    "Summary",
    "arrival_times",
    "percentile",
    "random_requests",
    "run_load",
    "send_request",
    "summarize",
    "wall_duration",
]
