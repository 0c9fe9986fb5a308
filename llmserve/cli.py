"""`llmserve` command line: serve, generate, chat, quantize, eval, bench, alerts and profile."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from llmserve.bench.cli import add_bench_parser
from llmserve.chat_cli import CHAT_FALLBACK, GREEDY, add_sampling_args, run_chat, sampling_params, stream
from llmserve.config import BACKENDS, CPU_DEFAULTS, CUDA_DEFAULTS, EngineConfig, device_defaults, parse_size
from llmserve.eval.cli import add_eval_parser
from llmserve.observability.cli import add_alerts_parser
from llmserve.profiling.cli import add_profile_parser
from llmserve.server.api_key import API_KEY_ENV, resolve_api_key
from llmserve.service_classes import DEFAULT_SERVICE_CLASSES, ServiceClasses
from llmserve.spec_decode.config import METHODS
from llmserve.terminal import write_flushed
from llmserve.units import parse_bandwidth, parse_duration_s


def _gib(size: int | None) -> str:
    return "sized from GPU memory" if size is None else f"{size / (1 << 30):g}GiB"


def _engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--model", default=None,
                       help="HF folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    add_device_arg(group)
    group.add_argument("--backend", default="auto", choices=BACKENDS,
                       help="attention backend: auto (the device's own), cpu (our C kernels), torch (SDPA, any "
                            "device), cuda (Triton kernels)")
    group.add_argument("--enforce-eager", action="store_true",
                       help="CUDA: run every step eagerly, without CUDA graphs (slower decode, faster start)")
    group.add_argument("--gpu-memory-utilization", type=float, default=0.9, metavar="FRACTION",
                       help="CUDA: the fraction of the GPU's memory this engine may use; the KV pool gets what "
                            "the weights and a profiling forward leave of it (default: 0.9)")
    group.add_argument("--dtype", default="auto",
                       help="auto | float32 | bfloat16 | float16 (auto: bf16 on CUDA and on CPUs with AMX-BF16, "
                            "else fp32)")
    group.add_argument("--load-format", default="auto", help="auto | safetensors | gguf | dummy")
    group.add_argument("--quantization", "-q", default=None,
                       help="none | int8 | int4 | w8a8 | fp8 (CUDA, compute capability 8.9+): weights quantized "
                            "at load time (default: none, or what a `llmserve quantize` folder holds)")
    _quant_detail_args(group)
    group.add_argument("--max-model-len", type=int, default=None)
    group.add_argument("--kv-cache-memory", default=None,
                       help=f"KV cache pool size, e.g. 2GiB (default: {_gib(CPU_DEFAULTS.kv_cache_memory)} on CPU, "
                            f"{_gib(CUDA_DEFAULTS.kv_cache_memory)} on CUDA: see --gpu-memory-utilization)")
    group.add_argument("--block-size", type=int, default=16)
    group.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                       help="reuse the KV of full blocks shared with earlier prompts (default: on)")
    group.add_argument("--max-num-seqs", type=int, default=None,
                       help=f"requests per engine step (default: {CPU_DEFAULTS.max_num_seqs} on CPU, "
                            f"{CUDA_DEFAULTS.max_num_seqs} on CUDA)")
    group.add_argument("--max-num-batched-tokens", type=int, default=None,
                       help=f"tokens per engine step (default: {CPU_DEFAULTS.max_num_batched_tokens} on CPU, "
                            f"{CUDA_DEFAULTS.max_num_batched_tokens} on CUDA)")
    group.add_argument("--threads", type=int, default=None,
                       help="CPU threads (default: adapt to the cores this process may use, fewer while other "
                            "processes keep some busy)")
    group.add_argument("--seed", type=int, default=0)
    _speculative_args(parser)
    classes = parser.add_argument_group("service classes")
    classes.add_argument("--scheduling-policy", default="classes", choices=("classes", "fcfs"),
                         help="classes: by service class and deadline, with shares and preemption; "
                              "fcfs: arrival order")
    classes.add_argument("--service-classes", default=None, metavar="FILE",
                         help="a .toml or .yaml file of service classes (default: p0-p3)")
    classes.add_argument("--service-class", action="append", default=None, metavar="SPEC",
                         help="edit or add a class, e.g. p0:ttft=200ms,e2e=1s,share=0.4 (repeatable)")
    classes.add_argument("--default-service-class", default=None, metavar="NAME",
                         help="the class of requests that name none (default: the file's, else p3)")


def _speculative_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("speculative decoding (vLLM's speculative_config)")
    group.add_argument("--speculative-config", default=None, metavar="JSON",
                       help='vLLM\'s form, e.g. \'{"method": "ngram", "num_speculative_tokens": 4}\'')
    group.add_argument("--speculative-method", default=None, choices=METHODS,
                       help="ngram: drafts copied from the request's own prompt and output (prompt lookup)")
    group.add_argument("--num-speculative-tokens", type=int, default=None, metavar="K",
                       help="drafts verified per step and sequence (default 4)")
    group.add_argument("--prompt-lookup-max", type=int, default=None, metavar="N", help="longest n-gram (default 4)")
    group.add_argument("--prompt-lookup-min", type=int, default=None, metavar="N", help="shortest n-gram (default 2)")


def _speculative_config(args: argparse.Namespace) -> dict | None:
    """--speculative-config's JSON, with the single flags laid over it; None when no method is named."""
    config = json.loads(args.speculative_config) if args.speculative_config else {}
    if not isinstance(config, dict):
        raise ValueError("--speculative-config must be a JSON object")
    for key in ("speculative_method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min"):
        value = getattr(args, key)
        if value is not None:
            config[key.removeprefix("speculative_")] = value
    if config and config.get("method") is None:
        raise ValueError("speculative decoding needs a method: --speculative-method ngram")
    return config or None


def add_device_arg(group: argparse._ActionsContainer, auto: str = "the first GPU when CUDA is available, "
                   "else the CPU") -> None:
    """`--device`, shared by serve, generate, chat, quantize and eval; checked by resolve_device."""
    group.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                       help=f"where the model runs (default: auto, {auto})")


def _quant_detail_args(group: argparse._ActionsContainer) -> None:
    """The int4 group size and the skipped modules, shared by the engine flags and `quantize`."""
    group.add_argument("--quant-group-size", type=int, default=None,
                       help="int4 group size: 32, 64 or 128 (default: 32 for a block-quantized GGUF file, else 128 "
                            "where it divides a layer's input, else 64, else 32)")
    group.add_argument("--quant-skip", default=None, metavar="MODULES",
                       help="modules kept in full precision, paths or globs, e.g. lm_head,layers.0")


def _engine_kwargs(args: argparse.Namespace) -> dict:
    """The keywords of EngineConfig.create; a bad --device fails here, before anything loads. Settings
    left unset take the device's defaults; the step's token budget is pinned here so that `generate`
    and `chat` run what `serve` runs (LLM(...) alone takes larger offline chunks on CPU)."""
    from llmserve.devices import resolve_device

    _check_model_path(args.model)
    device = str(resolve_device(args.device))
    batched_tokens = args.max_num_batched_tokens
    if batched_tokens is None:
        batched_tokens = device_defaults(device).max_num_batched_tokens
    return dict(model=args.model, dtype=args.dtype, load_format=args.load_format, max_model_len=args.max_model_len,
                kv_cache_memory=args.kv_cache_memory, block_size=args.block_size,
                enable_prefix_caching=args.prefix_caching, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=batched_tokens, num_threads=args.threads, seed=args.seed,
                device=device, enforce_eager=args.enforce_eager, backend=args.backend,
                gpu_memory_utilization=args.gpu_memory_utilization,
                scheduling_policy=args.scheduling_policy, service_classes=_service_classes(args),
                quantization=args.quantization, quant_group_size=args.quant_group_size, quant_skip=args.quant_skip,
                speculative_config=_speculative_config(args))


def _check_model_path(model: str | None) -> None:
    """A missing model is a one-line error before anything loads, and before `serve` binds its port
    (the loader would only find out on its worker thread, with a traceback)."""
    if model is None:
        return
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--model {model}: no such file or folder")
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {model}: the folder has no config.json (expected an HF model folder "
                                "or a .gguf file)")


def _service_classes(args: argparse.Namespace) -> ServiceClasses:
    classes = ServiceClasses.from_file(args.service_classes) if args.service_classes else DEFAULT_SERVICE_CLASSES
    for spec in args.service_class or ():
        classes = classes.with_spec(spec)
    return classes.with_default(args.default_service_class) if args.default_service_class else classes


def _make_llm(args: argparse.Namespace):
    from llmserve.llm import LLM

    template = _chat_template(args)
    llm = LLM(**_engine_kwargs(args))
    if template is not None:
        if llm.tokenizer is None:
            raise ValueError("--chat-template needs a model with a tokenizer")
        llm.tokenizer.chat_template = template  # this process's own tokenizer: every chat renders with it
    return llm


def _chat_template_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chat-template", default=None, metavar="FILE",
                        help="a Jinja chat template used instead of the model's own, or the name of one llmserve "
                             "ships: smollm2_tools (SmolLM2's template with Hermes-style tool calling)")


def _chat_template(args: argparse.Namespace) -> str | None:
    """--chat-template's text, checked to compile: a bad file is a one-line error before any loading."""
    if args.chat_template is None:
        return None
    from llmserve.model.templates import read_chat_template
    from llmserve.model.tokenizer import check_chat_template

    template = read_chat_template(args.chat_template)
    check_chat_template(template)
    return template


def cmd_generate(args: argparse.Namespace) -> int:
    llm = _make_llm(args)
    prompt: str | dict = args.prompt
    if args.chat:
        prompt = llm.tokenizer.render_chat([{"role": "user", "content": args.prompt}])
    stream(llm, prompt, sampling_params(args), write_flushed)
    write_flushed("\n")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    return run_chat(_make_llm(args), args)


def cmd_serve(args: argparse.Namespace) -> int:
    from llmserve.model.embedded import EMBEDDED_MODEL_NAME
    from llmserve.server.app import ServerConfig
    from llmserve.server.chat_tools import ChatSetup
    from llmserve.server.launcher import run_server

    if args.max_queued_requests is not None and args.max_queued_requests < 1:
        raise ValueError("--max-queued-requests must be at least 1")
    name = args.served_model_name or args.model or EMBEDDED_MODEL_NAME
    if args.max_request_body < 1 or args.request_read_timeout <= 0:
        raise ValueError("--max-request-body and --request-read-timeout must be positive")
    engine_args = _engine_kwargs(args)
    chat = ChatSetup(_chat_template(args), args.tool_call_parser)
    EngineConfig.create(**engine_args)  # a bad setting is a one-line error now, not a failed start-up
    config = ServerConfig(host=args.host, port=args.port, api_key=resolve_api_key(args.api_key, args.api_key_file),
                          max_queued_requests=args.max_queued_requests, served_model_name=name,
                          shutdown_timeout=args.shutdown_timeout, warmup=not args.no_warmup,
                          response_cache=args.response_cache, response_cache_ttl=args.response_cache_ttl,
                          response_cache_shared=args.response_cache_shared, max_request_body=args.max_request_body,
                          request_read_timeout=args.request_read_timeout, engine_args=engine_args, chat=chat,
                          memory_bandwidth=args.memory_bandwidth)
    plan = _replica_plan(args)
    if plan is not None:
        from llmserve.replicas.launch import run_replicated_server  # Ray is imported here, and only here

        return run_replicated_server(config, plan, log_level=args.log_level or "INFO")
    return run_server(config, log_level=args.log_level or "INFO")


def _replica_plan(args: argparse.Namespace):
    """The ReplicaPlan of --replicas, or None to serve in-process; flag errors are one-line ValueErrors."""
    if args.replicas is None:
        if args.threads_per_replica is not None or args.ray_address is not None or args.replica_router != "prefix":
            raise ValueError("--threads-per-replica, --ray-address and --replica-router need --replicas")
        return None
    from llmserve.replicas.plan import ReplicaPlan, parse_replicas

    if args.threads is not None:
        raise ValueError("with --replicas, give threads with --threads-per-replica (--threads is the single engine's)")
    if args.threads_per_replica is not None and args.threads_per_replica < 1:
        raise ValueError("--threads-per-replica must be at least 1")
    low, high = parse_replicas(args.replicas)
    return ReplicaPlan(low, high, args.threads_per_replica, args.ray_address, router=args.replica_router)


def cmd_quantize(args: argparse.Namespace) -> int:
    from llmserve.devices import resolve_device
    from llmserve.model.loader import load_model, resolve_dtype
    from llmserve.quant.checkpoint import save_quantized
    from llmserve.quant.config import QuantConfig

    quant = QuantConfig.create(args.quantization, args.quant_group_size, args.quant_skip)
    if not quant.enabled:
        raise ValueError("--quantization must name a method: int8, int4, w8a8 or fp8")
    start = time.perf_counter()
    # auto: the CPU, whose results every device reproduces, except for fp8, which only a GPU can make
    # (without one, loading says so in fp8's own words).
    auto = "cuda" if quant.method == "fp8" else "cpu"
    device = auto if args.device == "auto" else str(resolve_device(args.device))
    loaded = load_model(args.model, resolve_dtype(args.dtype, device), 2048, device=device, quant=quant)
    out = save_quantized(loaded, Path(args.out))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {loaded.quant.describe()} weights of {loaded.config.architecture} to {out} "
          f"({size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f}s); serve them with "
          f"`llmserve serve --model {out}`")
    return 0


def _quantize_parser(sub) -> None:
    quantize = sub.add_parser("quantize", help="quantize a model once and save it, so later starts are fast")
    quantize.add_argument("model", nargs="?", default=None,
                          help="HF folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    quantize.add_argument("--quantization", "-q", required=True, help="int8 | int4 | w8a8 | fp8")
    _quant_detail_args(quantize)
    quantize.add_argument("--dtype", default="auto", help="dtype of what stays unquantized (norms, skipped modules)")
    add_device_arg(quantize, "the CPU, or the first GPU for fp8, which needs one")
    quantize.add_argument("--out", required=True, help="folder to write (config.json, model.safetensors, tokenizer)")
    quantize.set_defaults(func=cmd_quantize)


def _serve_parser(sub) -> None:
    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    serve.add_argument("--port", type=int, default=8000)
    auth = serve.add_argument_group(
        "API key", f"/v1 routes then require 'Authorization: Bearer KEY'. The key comes from --api-key or "
        f"--api-key-file (not both), else from ${API_KEY_ENV}; none of them: no key is required. --api-key is "
        f"visible to every user of the machine in `ps`: prefer the file or the variable.")
    auth = auth.add_mutually_exclusive_group()
    auth.add_argument("--api-key", default=None, metavar="KEY", help="the key itself")
    auth.add_argument("--api-key-file", default=None, metavar="PATH",
                      help="a file holding the key (one line; a trailing newline is ignored)")
    serve.add_argument("--max-queued-requests", type=int, default=None,
                       help="answer 429 when this many requests wait for their first token")
    serve.add_argument("--served-model-name", default=None, help="the model name clients use")
    serve.add_argument("--shutdown-timeout", type=float, default=30.0,
                       help="seconds SIGTERM waits for in-flight requests before cutting them off, each with an "
                            "error (code server_shutting_down: an SSE error event then [DONE], or a 503)")
    serve.add_argument("--no-warmup", action="store_true", help="report healthy without a warm-up batch")
    limits = serve.add_argument_group("request limits")
    limits.add_argument("--max-request-body", type=parse_size, default="4MiB", metavar="SIZE",
                        help="answer 413, unread, to a larger request body (default: 4MiB, about a million tokens "
                             "of text, past any context this server runs)")
    limits.add_argument("--request-read-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="answer 408 and close the connection when a request body has not fully arrived this "
                             "long after its headers (default: 30)")
    cache = serve.add_argument_group("response cache")
    cache.add_argument("--response-cache", default=None, metavar="SIZE|URL",
                       help="answer repeated greedy or seeded requests from a cache: a size held in memory "
                            "(e.g. 256MiB) or a redis:// URL shared by replicas (default: off)")
    cache.add_argument("--response-cache-ttl", type=parse_duration_s, default=3600.0, metavar="DURATION",
                       help="how long an entry lives, e.g. 10m or 1h (default: 1h)")
    cache.add_argument("--response-cache-shared", action="store_true",
                       help="let callers with different API keys share entries")
    serve.add_argument("--memory-bandwidth", type=parse_bandwidth, default="auto", metavar="auto|RATE",
                       help="the device's memory bandwidth, for the model_bandwidth_utilization metric: e.g. "
                            "3.35TB/s (a GPU's datasheet figure), or auto: measured by a copy at start (default)")
    tools = serve.add_argument_group("chat and tool calling")
    _chat_template_arg(tools)
    tools.add_argument("--tool-call-parser", default=None, choices=("hermes", "llama3"),
                       help="how tool calls are read out of the output: hermes (<tool_call>{...}</tool_call>) or "
                            "llama3 (a JSON call as the message) (default: told by the chat template's markers)")
    replicas = serve.add_argument_group(
        "replicas", "several engines behind this one endpoint, as Ray Serve deployments (needs "
        "pip install 'llmserve[ray]'); without --replicas the server runs its engine in-process and never imports Ray")
    replicas.add_argument("--replicas", default=None, metavar="N|auto:MIN-MAX",
                          help="N engine replicas, or between MIN and MAX scaled on ongoing requests per replica")
    replicas.add_argument("--threads-per-replica", type=int, default=None, metavar="T",
                          help="fixed engine threads (and Ray CPUs) per replica (default: each engine adapts its "
                               "threads to the cores the others leave, as the single server does, and asks Ray "
                               "for the cores over the replicas)")
    replicas.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                          help="join this Ray cluster instead of starting one on this machine: auto (the cluster "
                               "this node belongs to) or its head's GCS address; replicas then spread over its "
                               "nodes. Not ray:// (Ray Client cannot stream through deployment handles)")
    replicas.add_argument("--replica-router", default="prefix", choices=("prefix", "pow2"),
                          help="prefix: a prompt goes to the replica that served its prefix unless that one is "
                               "busy, else the less loaded of two (default); pow2: Ray Serve's default router")
    _engine_args(serve)
    serve.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmserve", description="LLM inference with llmserve's own engine")
    parser.add_argument("--log-level", default=None, help="default: INFO for serve, WARNING otherwise")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    gen = sub.add_parser("generate", help="complete one prompt and print the text as it streams")
    gen.add_argument("prompt")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    _chat_template_arg(gen)
    _engine_args(gen)
    add_sampling_args(gen, {**GREEDY, "max_tokens": 64}, from_model=False)
    gen.set_defaults(func=cmd_generate)
    chat = sub.add_parser("chat", help="interactive chat that streams the reply")
    chat.add_argument("--system", default=None, help="system prompt")
    _chat_template_arg(chat)
    _engine_args(chat)
    add_sampling_args(chat, {**CHAT_FALLBACK, "max_tokens": 512}, from_model=True)
    chat.set_defaults(func=cmd_chat)
    _quantize_parser(sub)
    add_eval_parser(sub)
    add_bench_parser(sub)
    add_alerts_parser(sub)
    add_profile_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    default_level = "INFO" if args.command == "serve" else "WARNING"
    logging.basicConfig(level=(args.log_level or default_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"llmserve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
