"""SIGTERM with requests that outlive --shutdown-timeout: each is cut off with an error its client can
read (an SSE error event then [DONE], or a 503), code server_shutting_down; one log line each, no tracebacks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

from tests.net import free_port
from tests.server.live_server import MODEL_NAME, scrape, wait_healthy

# The real launcher (run_server: uvicorn, signals, the drain) on the tiny model, whose engine steps
# each wait 50 ms first: 900 tokens then take 45 s at the least, so both requests are surely still
# running when the 1 s shutdown timeout ends, however fast the machine.
SERVER = """
import logging, sys, time
from llmserve.engine.async_engine import AsyncEngine
from llmserve.server.app import ServerConfig
from llmserve.server.launcher import run_server

logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
model, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def slow_engine():
    engine = AsyncEngine.from_args(model, max_model_len=1024)
    step = engine.engine.step

    def slow_step():
        time.sleep(0.05)
        return step()

    engine.engine.step = slow_step
    return engine

config = ServerConfig(port=port, served_model_name=name, shutdown_timeout=1.0, warmup=False)
sys.exit(run_server(config, engine_factory=slow_engine))
"""

LONG = {"model": MODEL_NAME, "prompt": "Go on", "max_tokens": 900, "ignore_eos": True}


def _wait_until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_requests_past_the_shutdown_timeout_are_cut_off_with_an_error(chat_model_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(chat_model_path), str(port), MODEL_NAME],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    whole: list[httpx.Response] = []
    try:
        wait_healthy(url, timeout=120)
        background = threading.Thread(target=lambda: whole.append(httpx.post(url + "/v1/completions", json=LONG,
                                                                             timeout=120)))
        background.start()
        with httpx.stream("POST", url + "/v1/completions", json={**LONG, "stream": True}, timeout=120) as resp:
            lines = resp.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            _wait_until(lambda: scrape(url).get(f'llmserve:num_requests_running{{model_name="{MODEL_NAME}"}}') == 2,
                        "both requests run")
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        background.join(120)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert rest[-1] == "data: [DONE]", rest[-3:]
    assert '"code":"server_shutting_down"' in rest[-2] and '"type":"service_unavailable"' in rest[-2]
    assert whole and whole[0].status_code == 503, output
    assert whole[0].json()["error"]["code"] == "server_shutting_down"
    assert "Traceback" not in output and "Cancel" not in output, output
    request_lines = re.findall(r"cmpl-\w+ (\S+) prompt_tokens=", output)
    assert sorted(request_lines) == ["503", "server_shutting_down"], output
