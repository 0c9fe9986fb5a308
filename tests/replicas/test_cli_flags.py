"""`llmserve serve --replicas`: flag checks, and the single-process server never importing Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmserve.cli import main
from llmserve.replicas.plan import ReplicaPlan, parse_replicas


def test_the_single_server_does_not_import_ray():
    code = ("import sys\n"
            "from llmserve.cli import build_parser, _replica_plan\n"
            "import llmserve.server.launcher, llmserve.server.app, llmserve.server.routes\n"
            "args = build_parser().parse_args(['serve', '--port', '0'])\n"
            "assert _replica_plan(args) is None\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("text", "expected"), [("2", (2, 2)), ("1", (1, 1)), ("auto:1-4", (1, 4)),
                                                ("auto:2-2", (2, 2))])
def test_replica_counts(text, expected):
    assert parse_replicas(text) == expected


@pytest.mark.parametrize("text", ["0", "auto:0-2", "auto:3-2", "auto", "two", "-1"])
def test_bad_replica_counts(text):
    with pytest.raises(ValueError, match="--replicas"):
        parse_replicas(text)


@pytest.mark.parametrize("argv", [["--replicas", "auto:3-1"], ["--threads-per-replica", "1"],
                                  ["--ray-address", "auto"], ["--replicas", "2", "--threads", "2"],
                                  ["--replicas", "2", "--threads-per-replica", "0"], ["--replica-router", "pow2"],
                                  ["--replicas", "2", "--ray-address", "ray://head:10001"]])
def test_bad_flags_are_one_line_errors_before_anything_starts(argv, capsys):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmserve: error:") and err.count("\n") == 1


def test_each_replica_reserves_the_cores_over_the_replicas():
    assert ReplicaPlan(2, 2, num_cpus=2).cpus == 1
    assert ReplicaPlan(1, 1, num_cpus=2).cpus == 2
    assert ReplicaPlan(1, 4, num_cpus=2).cpus == 1  # autoscaling: sized for the most replicas
    assert ReplicaPlan(2, 2, threads_per_replica=3, num_cpus=2).cpus == 3
    assert ReplicaPlan(1, 3, num_cpus=2).describe() == "1-3 (autoscaling) replica(s) x adaptive threads, 1 CPU(s) each"
