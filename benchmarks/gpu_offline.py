"""The GPU check's driver: llmserve against transformers on dummy Llama-3 shapes, in parts that each print
`RESULT ...` lines or one `FAILED ...` line, so one run on a GPU yields every figure it can.

    python benchmarks/gpu_offline.py offline --shape 8b [--num-requests 1000] [--input-len 128] [--output-len 128]
    python benchmarks/gpu_offline.py startup --shape 1b
    python benchmarks/gpu_offline.py config --shape 8b --out DIR

`offline` runs our engine (throughput, batch-1 decode against the roofline, CUDA graph capture time) and then
transformers' `generate` (static batches, random init), each in a process of its own with a fresh GPU, and
prints the ratio. `startup` times `llmserve serve` from launch to a 200 from /health. Weights are random
(load_format="dummy") and prompts random token ids, so no checkpoint, tokenizer or network is needed.
`--device cpu --shape tiny` is a dry run of the same code on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO_ROOT = Path(__file__).resolve().parent.parent

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
# name -> (hidden, layers, heads, kv heads, intermediate, vocab, tied embedding)
SHAPES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "1b": (2048, 16, 32, 8, 8192, 128256, True),  # Llama-3.2-1B
    "8b": (4096, 32, 32, 8, 14336, 128256, False),  # Llama-3.1-8B
    "tiny": (64, 2, 4, 2, 128, 1024, True),  # a dry run on CPU
}
MAX_MODEL_LEN = 2048
JSON_PREFIX = "JSON "


def llama3_config(shape: str) -> dict[str, Any]:
    hidden, layers, heads, kv_heads, intermediate, vocab, tied = SHAPES[shape]
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads, "intermediate_size": intermediate, "vocab_size": vocab,
        "max_position_embeddings": 131072, "rope_theta": 500000.0, "rope_scaling": dict(_LLAMA3_ROPE),
        "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": tied, "attention_bias": False,
        "mlp_bias": False, "bos_token_id": 128000 if vocab > 128001 else 1,
        "eos_token_id": 128001 if vocab > 128001 else 2, "torch_dtype": "bfloat16",
    }


def write_config(shape: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(llama3_config(shape), indent=2))
    return folder


def label(shape: str) -> str:
    return shape.upper()


def emit(data: dict[str, Any]) -> None:
    print(JSON_PREFIX + json.dumps(data), flush=True)


# --- our engine (child process) ----------------------------------------------------------------

def run_ours_child(args: argparse.Namespace) -> None:
    import torch

    from benchmarks.common import make_workload, measure_copy_bandwidth
    from benchmarks.offline_throughput import decode_bytes_per_step, run_ours
    from llmserve import LLM
    from llmserve.quant.apply import weights_nbytes

    name = label(args.shape)
    with tempfile.TemporaryDirectory(prefix="llmserve-gpu-") as tmp:
        folder = write_config(args.shape, Path(tmp))
        start = time.perf_counter()
        llm = LLM(str(folder), load_format="dummy", dtype="bfloat16", device=args.device,
                  max_model_len=MAX_MODEL_LEN, enforce_eager=args.enforce_eager)
        load_s = time.perf_counter() - start
    engine = llm.engine
    capture_s = float(getattr(engine, "graph_capture_seconds", 0.0) or 0.0)
    print(f"RESULT {name} graph capture: {capture_s:.2f} s (engine load {load_s:.1f} s, "
          f"{'eager' if args.enforce_eager else 'graphs on'}; 0.00 when the engine exposes no figure)", flush=True)
    vocab = engine.model_config.vocab_size
    run_ours(llm, make_workload(4, (16, 16), (4, 4), vocab, args.seed + 2))  # warm-up
    workload = make_workload(args.num_requests, (args.input_len, args.input_len), (args.output_len, args.output_len),
                             vocab, args.seed)
    run = run_ours(llm, workload)
    print(f"RESULT {name} offline ours: {run.output_tok_s:.0f} output tok/s, {run.total_tok_s:.0f} total tok/s "
          f"({len(workload)} requests, {args.input_len} in / {args.output_len} out, {run.seconds:.1f} s)", flush=True)
    emit({"ours_output_tok_s": run.output_tok_s, "ours_seconds": run.seconds, "load_seconds": load_s,
          "graph_capture_seconds": capture_s})

    b1 = batch1_decode_tok_s(llm, vocab, args.seed, args.input_len, args.b1_output_len)
    device = torch.device(engine.device)
    bandwidth = measure_copy_bandwidth(2048 if device.type == "cuda" else 256, device=device)
    try:
        weights = decode_bytes_per_step(llm)["weights"]
    except AttributeError:  # a model without embed_tokens.weight: count every parameter once
        weights = weights_nbytes(engine.runner.model)
    roofline = bandwidth / weights
    print(f"RESULT {name} batch-1 decode: {b1:.1f} tok/s, roofline {roofline:.1f} tok/s ({weights / 1e9:.2f} GB "
          f"of weights per step / {bandwidth / 1e9:.0f} GB/s measured copy bandwidth), {b1 / roofline:.0%} of "
          f"roofline ({args.input_len} in, {args.b1_output_len} out)", flush=True)
    emit({"batch1_tok_s": b1, "roofline_tok_s": roofline, "bandwidth_gb_s": bandwidth / 1e9})


def batch1_decode_tok_s(llm, vocab: int, seed: int, input_len: int, output_len: int, trials: int = 2) -> float:
    """Best decode tokens/s of one request alone, from its first token (after the prefill) to its last."""
    from benchmarks.offline_throughput import batch1_decode_tok_s as trial_rates

    return max(trial_rates(llm, vocab, seed, input_len, output_len, trials))


# --- transformers (child process) --------------------------------------------------------------

def run_hf_child(args: argparse.Namespace) -> None:
    import torch
    import transformers

    from benchmarks.common import make_workload
    from benchmarks.offline_throughput import _left_padded

    name = label(args.shape)
    device = torch.device(args.device)
    start = time.perf_counter()
    config = transformers.LlamaConfig(**llama3_config(args.shape))
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    with device:  # random init straight on the device: no host copy of the weights
        model = transformers.AutoModelForCausalLM.from_config(config, **{dtype_kw: torch.bfloat16}).eval()
    load_s = time.perf_counter() - start
    pad_id = config.eos_token_id
    workload = make_workload(args.num_requests, (args.input_len, args.input_len), (args.output_len, args.output_len),
                             config.vocab_size, args.seed)

    @torch.inference_mode()
    def generate(batch) -> int:
        ids, mask = (t.to(device) for t in _left_padded(batch, pad_id))
        new = max(r.output_len for r in batch)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=pad_id)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return sum(min(r.output_len, out.shape[1] - ids.shape[1]) for r in batch)

    generate(workload[:2])  # warm-up
    done = tokens = 0
    start = time.perf_counter()
    while done < len(workload) and time.perf_counter() - start < args.hf_max_seconds:
        batch = workload[done:done + args.hf_batch_size]
        tokens += generate(batch)
        done += len(batch)
    seconds = time.perf_counter() - start
    subset = "all" if done == len(workload) else f"the first {done} (time cap {args.hf_max_seconds:.0f} s)"
    tok_s = tokens / seconds
    print(f"RESULT {name} offline transformers {transformers.__version__}: {tok_s:.0f} output tok/s (static batches "
          f"of {args.hf_batch_size}, timed {subset} of {len(workload)} requests, {seconds:.1f} s; "
          f"init {load_s:.1f} s)", flush=True)
    emit({"hf_output_tok_s": tok_s, "hf_requests_timed": done})


# --- parents -----------------------------------------------------------------------------------

def run_child(role: str, args: argparse.Namespace, timeout_s: float) -> dict[str, Any]:
    """Runs this script as `role`, echoing its output; returns what its JSON lines said."""
    argv = [sys.executable, str(Path(__file__).resolve()), role, "--shape", args.shape, "--device", args.device,
            "--num-requests", str(args.num_requests), "--input-len", str(args.input_len),
            "--output-len", str(args.output_len), "--b1-output-len", str(args.b1_output_len),
            "--hf-batch-size", str(args.hf_batch_size), "--hf-max-seconds", str(args.hf_max_seconds),
            "--seed", str(args.seed), *(["--enforce-eager"] if args.enforce_eager else [])]
    found: dict[str, Any] = {}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": _pythonpath()})
    deadline = time.monotonic() + timeout_s
    tail: list[str] = []
    assert proc.stdout is not None
    try:
        for line in iter(proc.stdout.readline, ""):
            if line.startswith(JSON_PREFIX):
                found.update(json.loads(line[len(JSON_PREFIX):]))
            else:
                print(line, end="", flush=True)
                tail = (tail + [line.rstrip()])[-5:]
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(argv, timeout_s)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print(f"FAILED {label(args.shape)} {role}: timed out after {timeout_s:.0f} s", flush=True)
        return found
    if code != 0:
        last = next((t for t in reversed(tail) if t.strip()), f"exit {code}")
        print(f"FAILED {label(args.shape)} {role}: {last}", flush=True)
    return found


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)


def run_offline(args: argparse.Namespace) -> int:
    ours = run_child("ours", args, args.ours_timeout)
    hf = {} if args.skip_hf else run_child("hf", args, args.hf_timeout)
    name = label(args.shape)
    if "ours_output_tok_s" in ours and "hf_output_tok_s" in hf:
        ratio = ours["ours_output_tok_s"] / hf["hf_output_tok_s"]
        print(f"RESULT {name} offline: ours {ours['ours_output_tok_s']:.0f} tok/s, transformers "
              f"{hf['hf_output_tok_s']:.0f} tok/s, ratio {ratio:.1f}x ({args.num_requests} requests, "
              f"{args.input_len} in / {args.output_len} out, bf16, {args.device})", flush=True)
        return 0
    if not args.skip_hf:
        print(f"FAILED {name} offline ratio: missing {'ours' if 'ours_output_tok_s' not in ours else 'transformers'}",
              flush=True)
    return 1


def run_startup(args: argparse.Namespace) -> int:
    """Seconds from launching `llmserve serve` to a 200 from /health (warm-up included, as a client sees it)."""
    name = label(args.shape)
    with tempfile.TemporaryDirectory(prefix="llmserve-gpu-") as tmp:
        folder = write_config(args.shape, Path(tmp) / "model")
        log_path = Path(tmp) / "serve.log"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "llmserve.cli", "serve", "--model", str(folder), "--load-format", "dummy",
               "--dtype", "bfloat16", "--device", args.device, "--max-model-len", str(MAX_MODEL_LEN),
               "--port", str(port), *(["--enforce-eager"] if args.enforce_eager else [])]
        start = time.perf_counter()
        with open(log_path, "w") as log:
            server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                      env={**os.environ, "PYTHONPATH": _pythonpath()})
        try:
            healthy = _wait_healthy(f"http://127.0.0.1:{port}/health", server, start + args.startup_timeout)
            seconds = time.perf_counter() - start
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if healthy:
            print(f"RESULT {name} cold start to healthy: {seconds:.1f} s (`llmserve serve --device {args.device}`, "
                  f"dummy weights, from launch to a 200 from /health)", flush=True)
            return 0
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        why = "exited" if server.returncode not in (None, -15) else f"not healthy within {args.startup_timeout:.0f} s"
        print("\n".join(lines[-8:]), flush=True)
        print(f"FAILED {name} cold start: server {why}: {lines[-1] if lines else 'no output'}", flush=True)
        return 1


def _wait_healthy(url: str, server: subprocess.Popen, deadline: float) -> bool:
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("offline", "startup", "config", "ours", "hf"),
                   help="ours and hf are the offline command's child processes")
    p.add_argument("--shape", choices=tuple(SHAPES), default="1b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--b1-output-len", type=int, default=256, help="batch-1 decode: tokens generated")
    p.add_argument("--hf-batch-size", type=int, default=64)
    p.add_argument("--hf-max-seconds", type=float, default=40.0,
                   help="transformers: stop starting batches after this long; the rate is over the batches run")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--enforce-eager", action="store_true", help="our engine without CUDA graphs")
    p.add_argument("--ours-timeout", type=float, default=110.0, help="seconds for our engine's process")
    p.add_argument("--hf-timeout", type=float, default=75.0, help="seconds for transformers' process")
    p.add_argument("--startup-timeout", type=float, default=45.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="config: the folder to write config.json into")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "config":
        if args.out is None:
            raise SystemExit("config needs --out DIR")
        print(write_config(args.shape, args.out) / "config.json")
        return 0
    if args.command == "ours":
        run_ours_child(args)
        return 0
    if args.command == "hf":
        run_hf_child(args)
        return 0
    return run_offline(args) if args.command == "offline" else run_startup(args)


if __name__ == "__main__":
    sys.exit(main())
