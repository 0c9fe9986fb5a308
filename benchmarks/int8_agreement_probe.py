"""How far per-channel int8 can get on top-1 agreement: round-to-nearest against GPTQ-style error
compensation, both applied in fp32 to the embedded model (fake-quantized: no kernels, no bf16).

Calibration text is what the fp32 model writes itself from a few prompts, never the eval sample;
scores use `llmserve eval`'s sample and windows. About 4 minutes on 2 cores.

    python benchmarks/int8_agreement_probe.py
"""

from __future__ import annotations

import torch

from llmserve import LLM, SamplingParams
from llmserve.eval.scoring import TextScores, score_text
from llmserve.eval.worker import sample_text
from llmserve.model.layers import Linear, MergedLinear
from llmserve.model.loader import load_model
from llmserve.quant.int8 import dequantize_int8, quantize_int8

CALIBRATION_PROMPTS = ["Once upon a time", "The history of science", "In the kitchen,", "Dear friend,",
                       "The market opened", "A short story about a dog:", "Explain how rain forms.",
                       "The old house on the hill"]


def calibration_tokens() -> list[list[int]]:
    llm = LLM(None, dtype="float32", kv_cache_memory="256MiB", max_model_len=2048)
    params = SamplingParams(temperature=1.0, max_tokens=256, seed=1, ignore_eos=True)
    outs = llm.generate(CALIBRATION_PROMPTS, params)
    return [llm.engine.tokenizer.encode(p) + o.outputs[0].token_ids for p, o in zip(CALIBRATION_PROMPTS, outs,
                                                                                  strict=True)]


def input_hessians(loaded, texts: list[list[int]]) -> dict[str, torch.Tensor]:
    """X^T X of every linear's input, and of the final hidden states ("head") for the tied LM head."""
    model, hessians = loaded.model, {}

    def add(name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        hessians[name] = hessians.get(name, 0) + x.T @ x

    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: add(n, inp[0]))
             for n, m in model.named_modules() if isinstance(m, Linear | MergedLinear)]
    logits = model.compute_logits
    model.compute_logits = lambda hidden: (add("head", hidden), logits(hidden))[1]
    for ids in texts:
        score_text(model, loaded.config, torch.float32, torch.device("cpu"), ids, 512)
    for hook in hooks:
        hook.remove()
    model.compute_logits = logits
    return hessians


def gptq_int8(weight: torch.Tensor, hessian: torch.Tensor, damp: float = 0.01, block: int = 128) -> torch.Tensor:
    """Per-channel symmetric int8 (the same scales as round-to-nearest), each column's rounding
    error pushed onto the columns not yet rounded, weighted by the inverse Hessian (GPTQ)."""
    w = weight.double().clone()
    cols = w.shape[1]
    h = hessian + damp * torch.mean(torch.diag(hessian)) * torch.eye(cols, dtype=hessian.dtype)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    scale = w.abs().amax(1).clamp(min=1e-12) / 127
    out = torch.zeros_like(w)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        part, errors, h_part = w[:, start:end].clone(), torch.zeros(w.shape[0], end - start, dtype=w.dtype), \
            h_inv[start:end, start:end]
        for i in range(end - start):
            rounded = torch.clamp(torch.round(part[:, i] / scale), -127, 127) * scale
            out[:, start + i] = rounded
            errors[:, i] = (part[:, i] - rounded) / h_part[i, i]
            part[:, i:] -= errors[:, i:i + 1] * h_part[i, i:].unsqueeze(0)
        w[:, end:] -= errors @ h_inv[start:end, end:]
    return out.float()


def main() -> None:
    torch.set_num_threads(2)
    calibration = calibration_tokens()
    loaded = load_model(None, torch.float32, 2048)
    hessians = input_hessians(loaded, calibration)
    ids = loaded.tokenizer.encode(sample_text())
    score = lambda: score_text(loaded.model, loaded.config, torch.float32, torch.device("cpu"), ids, 512)  # noqa: E731
    base = score()
    original = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}

    def report(label: str, scores: TextScores) -> None:
        agree = sum(a == b for a, b in zip(scores.top1, base.top1, strict=True)) / len(base.top1)
        print(f"{label:34s} perplexity {scores.perplexity:.3f} ({scores.perplexity / base.perplexity - 1:+.2%}), "
              f"top-1 agreement {agree:.2%}", flush=True)

    print(f"calibration: {sum(map(len, calibration))} tokens the fp32 model wrote")
    for label, linears, head in [("round-to-nearest", False, False), ("GPTQ linears, RTN head", True, False),
                                 ("GPTQ linears and head", True, True)]:
        with torch.no_grad():
            for name, module in loaded.model.named_modules():
                if isinstance(module, Linear | MergedLinear):
                    w = original[name + ".weight"]
                    module.weight.copy_(gptq_int8(w, hessians[name]) if linears else dequantize_int8(*quantize_int8(w)))
            emb = original["embed_tokens.weight"]
            loaded.model.embed_tokens.weight.copy_(gptq_int8(emb, hessians["head"]) if head
                                                   else dequantize_int8(*quantize_int8(emb)))
        report(label, score())


if __name__ == "__main__":
    main()
