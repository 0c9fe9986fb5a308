"""What one request of a run measured, and its per-request figures as vLLM's bench defines them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestResult:
    ok: bool = False
    status: int | None = None  # None: no HTTP response at all (refused, reset before headers)
    error: str = ""
    send_time: float = 0.0  # all times are time.perf_counter() in the client process
    first_token_time: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # one per chunk that carried text
    end_time: float = 0.0  # the last chunk with choices (vLLM's E2EL), or when the request failed
    output_tokens: int = 0  # from the usage chunk when the server sends one, else the number of text chunks
    usage_reported: bool = False  # False: the token counts above are estimates
    prompt_tokens: int = 0  # from the usage chunk, else the request's input_len
    priority: int | None = None
    text: str = ""
    cache: str | None = None  # the server's X-Cache header (hit, miss, bypass), if it sends one


def request_ttft(r: RequestResult) -> float | None:
    return None if r.first_token_time is None else r.first_token_time - r.send_time


def request_tpot(r: RequestResult) -> float | None:
    ttft = request_ttft(r)
    if ttft is None or r.output_tokens <= 1:
        return None
    return (r.end_time - r.send_time - ttft) / (r.output_tokens - 1)


def request_itls(r: RequestResult) -> list[float]:
    return [b - a for a, b in zip(r.chunk_times, r.chunk_times[1:], strict=False)]
