"""A real Prometheus (Debian's package) on a free 127.0.0.1 port, scraping one target every second."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.net import free_port
from tests.timing import PATIENCE_S

CONFIG = """global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [{rules}]
scrape_configs:
  - job_name: llmserve
    static_configs:
      - targets: ['{target}']
"""


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen

    def query(self, expr: str) -> list[dict]:
        resp = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=PATIENCE_S)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def targets_up(self) -> bool:
        return any(float(r["value"][1]) == 1 for r in self.query('up{job="llmserve"}'))


@contextmanager
def prometheus(target: str, rules: Path, workdir: Path) -> Iterator[Prometheus]:
    """`target` is host:port; `rules` a rules file."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package prometheus; `make test` installs it)")
    config = workdir / "prometheus.yml"
    config.write_text(CONFIG.format(rules=f"'{rules}'", target=target))
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + PATIENCE_S
        while not _ready(server.url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {(workdir / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=PATIENCE_S)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/-/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
