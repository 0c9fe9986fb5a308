"""SIGTERM to `llmserve serve --replicas 1`: the stream in flight finishes whole, then the process
(and the Ray cluster it started) exits 0. A real process, with its own local Ray cluster."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.replicas.conftest import CLUSTER_BOUND_S, MODEL_NAME
from tests.server.live_server import wait_healthy
from tests.tiny_models import save_tiny_chat_model

pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_lets_the_stream_in_flight_finish(tmp_path: Path):
    pytest.importorskip("ray", reason="needs ray[serve]: pip install 'llmserve[ray]'")
    save_tiny_chat_model(tmp_path / "model")
    port = _free_port()
    argv = [sys.executable, "-m", "llmserve.cli", "serve", "--model", str(tmp_path / "model"),
            "--served-model-name", MODEL_NAME, "--port", str(port), "--replicas", "1",
            "--threads-per-replica", "1", "--max-model-len", "512", "--kv-cache-memory", "16MiB"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=CLUSTER_BOUND_S)
        body = {"model": MODEL_NAME, "prompt": "A long story", "max_tokens": 400, "ignore_eos": True,
                "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            first = json.loads(next(lines)[6:])
            proc.send_signal(signal.SIGTERM)
            rest = [line[6:] for line in lines]
        assert rest[-1] == "[DONE]"
        chunks = [first, *(json.loads(data) for data in rest[:-1])]
        assert all("error" not in chunk for chunk in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
