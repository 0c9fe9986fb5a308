"""The `llmserve` command line, run as a real subprocess on the embedded model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 180


def _run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "llmserve.cli", *args], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", cwd=REPO_ROOT, env=env, timeout=TIMEOUT_S)


@pytest.mark.slow
def test_generate_prints_text() -> None:
    result = _run_cli("generate", "The capital of France is", "--max-tokens", "8", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "Traceback" not in result.stderr


def test_missing_model_is_a_one_line_error() -> None:
    result = _run_cli("generate", "Hello", "--model", "/nonexistent", "--max-tokens", "8")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "/nonexistent" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("model", ["/nonexistent", "/"])
def test_serve_with_a_missing_model_exits_before_binding_with_one_line(model: str) -> None:
    port = _free_port()
    result = _run_cli("serve", "--model", model, "--port", str(port))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert model in lines[0] and "Traceback" not in result.stderr
    assert "starting on" not in result.stderr  # the server never got as far as binding its port


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bad_argument_is_a_usage_error() -> None:
    result = _run_cli("generate")  # no prompt
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "usage" in result.stderr


@pytest.mark.slow
def test_chat_over_stdin() -> None:
    result = _run_cli("chat", "--max-tokens", "16", "--threads", "1", stdin="Hi\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    banner, _, rest = result.stdout.partition("\n")
    assert banner.startswith("llmserve chat")
    # What follows the first "> " prompt is the streamed reply, then the prompt for the next line.
    reply = rest.split("> ", 1)[1].rsplit("> ", 1)[0] if rest.count("> ") >= 2 else ""
    assert reply.strip(), result.stdout


def test_service_class_flags_reach_the_engine(tmp_path: Path) -> None:
    from llmserve.cli import _engine_kwargs, build_parser

    path = tmp_path / "classes.yaml"
    path.write_text("default: bulk\nclasses:\n  - {name: gold, ttft: 1s, share: 0.7}\n"
                    "  - {name: bulk, share: 0.3}\n")
    args = build_parser().parse_args(["serve", "--scheduling-policy", "fcfs", "--service-classes", str(path),
                                      "--service-class", "gold:e2e=9s", "--default-service-class", "gold"])
    kwargs = _engine_kwargs(args)
    classes = kwargs["service_classes"]
    assert kwargs["scheduling_policy"] == "fcfs"
    assert classes.names == ["gold", "bulk"] and classes.default == "gold"
    assert (classes[0].ttft_target, classes[0].e2e_target, classes[0].share) == (1.0, 9.0, 0.7)


def test_prefix_caching_is_on_unless_turned_off() -> None:
    from llmserve.cli import _engine_kwargs, build_parser
    from llmserve.config import EngineConfig

    on = _engine_kwargs(build_parser().parse_args(["serve"]))
    off = _engine_kwargs(build_parser().parse_args(["serve", "--no-prefix-caching"]))
    assert EngineConfig.create(**on).cache.enable_prefix_caching is True
    assert EngineConfig.create(**off).cache.enable_prefix_caching is False


def test_a_bad_service_class_is_a_one_line_error() -> None:
    result = _run_cli("serve", "--service-class", "p0:ttft=soon")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "duration" in result.stderr


def test_quantization_flags_reach_the_engine_config() -> None:
    from llmserve.cli import _engine_kwargs, build_parser
    from llmserve.config import EngineConfig
    from llmserve.quant.config import QuantConfig

    for command in (["serve"], ["generate", "hi"], ["chat"]):
        args = build_parser().parse_args([*command, "-q", "int4", "--quant-group-size", "64",
                                          "--quant-skip", "lm_head, layers.*.mlp.down_proj"])
        config = EngineConfig.create(**_engine_kwargs(args))
        assert config.quant == QuantConfig("int4", 64, ("lm_head", "layers.*.mlp.down_proj"))
    assert EngineConfig.create(**_engine_kwargs(build_parser().parse_args(["serve"]))).quant.enabled is False


def _config_from_cli(*argv: str):
    from llmserve.cli import _engine_kwargs, build_parser
    from llmserve.config import EngineConfig

    return EngineConfig.create(**_engine_kwargs(build_parser().parse_args(list(argv))))


@pytest.mark.parametrize("command", [["serve"], ["generate", "hi"], ["chat"]])
def test_device_flags_reach_the_engine_config(command, monkeypatch) -> None:
    from tests.test_devices import fake_gpus

    fake_gpus(monkeypatch, 0)
    config = _config_from_cli(*command)  # auto, on a machine without a GPU
    assert config.device == "cpu" and config.backend == "auto" and config.enforce_eager is False
    assert config.cache.gpu_memory_utilization == 0.9
    # Today's CPU defaults, byte for byte.
    assert config.cache.kv_cache_memory == 2 << 30
    assert (config.scheduler.max_num_seqs, config.scheduler.max_num_batched_tokens) == (64, 512)
    fake_gpus(monkeypatch, 2)
    config = _config_from_cli(*command, "--device", "cuda:1", "--enforce-eager", "--gpu-memory-utilization", "0.5",
                              "--backend", "torch")
    assert config.device == "cuda:1" and config.backend == "torch" and config.enforce_eager is True
    assert config.cache.gpu_memory_utilization == 0.5
    assert config.cache.kv_cache_memory is None  # sized from the GPU's memory
    assert (config.scheduler.max_num_seqs, config.scheduler.max_num_batched_tokens) == (256, 8192)
    config = _config_from_cli(*command, "--kv-cache-memory", "4GiB", "--max-num-seqs", "32",
                              "--max-num-batched-tokens", "2048")
    assert config.device == "cuda:0"  # auto takes the first GPU
    assert config.cache.kv_cache_memory == 4 << 30
    assert (config.scheduler.max_num_seqs, config.scheduler.max_num_batched_tokens) == (32, 2048)


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "hi", "--device", "cuda"], "device 'cuda' needs CUDA"),
    (["chat", "--device", "cuda:1"], "device 'cuda:1' needs CUDA"),
    (["serve", "--device", "tpu"], "unknown device 'tpu'; use auto, cpu, cuda or cuda:N"),
    (["serve", "--gpu-memory-utilization", "1.5"], "gpu_memory_utilization must be a fraction in (0, 1]"),
    (["quantize", "-q", "int8", "--device", "cuda", "--out", "/nonexistent/q"], "device 'cuda' needs CUDA"),
    (["eval", "--device", "gpu"], "unknown device 'gpu'"),
])
def test_a_bad_device_is_a_one_line_error(argv, message) -> None:
    if "needs CUDA" in message:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    result = _run_cli(*argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("llmserve: error: ") and message in lines[0]


def test_an_unknown_backend_is_a_usage_error() -> None:
    result = _run_cli("serve", "--backend", "triton")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice: 'triton'" in result.stderr


@pytest.mark.parametrize(("template", "message"), [("/nonexistent.jinja", "neither a file"),
                                                   ("BAD", "not valid Jinja")])
def test_a_bad_chat_template_is_a_one_line_error(tmp_path: Path, template: str, message: str) -> None:
    if template == "BAD":
        template = str(tmp_path / "bad.jinja")
        Path(template).write_text("{% for m in messages %}")
    result = _run_cli("serve", "--chat-template", template)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


@pytest.mark.slow
def test_generate_with_the_shipped_tools_template() -> None:
    result = _run_cli("generate", "Hi", "--chat", "--chat-template", "smollm2_tools", "--max-tokens", "4",
                      "--threads", "1")
    assert result.returncode == 0, result.stderr


def test_memory_bandwidth_flag_reads_rates_or_auto(capsys) -> None:
    from llmserve.cli import build_parser
    from llmserve.units import parse_bandwidth

    parser = build_parser()
    assert parser.parse_args(["serve"]).memory_bandwidth is None  # auto: measured at start
    assert parser.parse_args(["serve", "--memory-bandwidth", "3.35TB/s"]).memory_bandwidth == 3.35e12
    assert parse_bandwidth("900GiB/s") == 900 * 2**30 and parse_bandwidth("2e11") == 2e11
    for bad in ("fast", "-1GB/s", "0"):
        with pytest.raises(ValueError):
            parse_bandwidth(bad)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--memory-bandwidth", "fast"])
    assert "--memory-bandwidth" in capsys.readouterr().err


def test_speculative_flags_reach_the_engine_config() -> None:
    from llmserve.spec_decode.config import SpeculativeConfig

    for command in (["serve"], ["generate", "hi"]):
        config = _config_from_cli(*command, "--speculative-method", "ngram", "--num-speculative-tokens", "5",
                                  "--prompt-lookup-max", "3")
        assert config.speculative == SpeculativeConfig("ngram", 5, 3, 2)
        config = _config_from_cli(*command, "--speculative-config", '{"method": "ngram", "prompt_lookup_min": 1}',
                                  "--num-speculative-tokens", "2")
        assert config.speculative == SpeculativeConfig("ngram", 2, 4, 1)
    assert _config_from_cli("serve").speculative is None


def test_speculative_flags_without_a_method_are_a_one_line_error() -> None:
    result = _run_cli("serve", "--num-speculative-tokens", "3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "--speculative-method" in result.stderr
