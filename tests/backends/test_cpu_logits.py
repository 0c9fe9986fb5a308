"""The LM head writes float32 logits, accumulated in float32, whatever the model's dtype.

Rounded to bf16, logits of 20 or so are 1/16 apart: near-ties collapse and greedy picks go another
way than the model's. Every path (the C kernels' float32-output variants, torch's float32 fallback)
must give the float32 product of the same bf16 operands, but for the order of its sums.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from llmserve.backends import cpu_ops
from llmserve.model.loader import load_model
from tests.tiny_models import save_tiny_model

# Sums in another order, in float32, over at most 1536 products of about unit size: errors near 1e-5
# of the logits' size. bf16 rounding of the output alone would be up to 2^-9 of it (~2e-3).
RTOL, ATOL = 1e-5, 1e-4


def _operands(rows: int, out_features: int, in_features: int, bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed + rows)
    x = torch.randn(rows, in_features, generator=gen).to(torch.bfloat16)
    weight = torch.randn(out_features, in_features, generator=gen).to(torch.bfloat16)
    b = torch.randn(out_features, generator=gen).to(torch.bfloat16) if bias else None
    return x, weight, b


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The product of the bf16 operands in float64: what a float32 accumulation approximates."""
    return F.linear(x.double(), weight.double(), None if bias is None else bias.double())


def _assert_float32_product(out: torch.Tensor, x, weight, bias) -> None:
    assert out.dtype == torch.float32 and out.shape == (*x.shape[:-1], weight.shape[0])
    torch.testing.assert_close(out.double(), _reference(x, weight, bias), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("rows", [1, 2, 8, 17, 64, 256, 257, 300])
@pytest.mark.parametrize(("out_features", "in_features", "bias"), [(960, 576, False), (80, 96, True),
                                                                    (30, 48, True)])
def test_logits_linear_is_the_float32_product_of_bf16_operands(rows, out_features, in_features, bias):
    """1 row: skinny_linear.c; 2 rows and more, 257 and 300 included, amx_linear.c writing float32
    (shapes it takes); odd shapes (30 x 48): torch in float32."""
    x, weight, b = _operands(rows, out_features, in_features, bias)
    out = cpu_ops.logits_linear(x, weight, b, cpu_ops.pack_for_amx(weight, None))
    _assert_float32_product(out, x, weight, b)


@pytest.mark.parametrize("rows", [1, 8, 300])
def test_the_torch_fallback_is_float32_in_chunks_of_output_channels(rows, monkeypatch):
    """No kernels (another CPU, LLMSERVE_NO_KERNELS): torch in float32, the weight widened a few
    channels at a time (here 64 of 200, a partial last chunk)."""
    monkeypatch.setattr(cpu_ops, "LOGITS_CHUNK_CHANNELS", 64)
    monkeypatch.setattr(cpu_ops, "skinny_linear_bf16_f32out", lambda: None)
    x, weight, b = _operands(rows, 200, 64, bias=True)
    _assert_float32_product(cpu_ops.logits_linear(x, weight, b, None), x, weight, b)
    x3 = x.view(rows, 1, 64)  # leading dims are kept
    _assert_float32_product(cpu_ops.logits_linear(x3, weight, b, None), x3, weight, b)


def test_float32_operands_take_linear_unchanged():
    gen = torch.Generator().manual_seed(3)
    x, weight = torch.randn(5, 64, generator=gen), torch.randn(32, 64, generator=gen)
    assert torch.equal(cpu_ops.logits_linear(x, weight), cpu_ops.linear(x, weight))


def _record(monkeypatch, getter: str, field: str | None = None) -> list[int]:
    """Row counts of each call of cpu_ops' kernel `getter` (or its AmxLinearKernels `field`)."""
    real = getattr(cpu_ops, getter)()
    if real is None:
        pytest.skip(f"no C compiler, or the CPU cannot run {getter}")
    calls: list[int] = []
    if field is None:
        monkeypatch.setattr(cpu_ops, getter, lambda: lambda *args: (calls.append(args[4]), real(*args))[1])
    else:
        fn = getattr(real, field)
        spy = type(real)(**{**vars(real), field: lambda *args: (calls.append(args[1]), fn(*args))[1]})
        monkeypatch.setattr(cpu_ops, getter, lambda: spy)
    return calls


def test_bf16_heads_take_the_float32_output_kernels(monkeypatch):
    skinny = _record(monkeypatch, "skinny_linear_bf16_f32out")
    amx = _record(monkeypatch, "amx_linear_kernels", "linear_f32out")
    x, weight, _ = _operands(300, 64, 64, bias=False)
    packed = cpu_ops.pack_for_amx(weight, None)
    for rows in (1, 8, 300):
        _assert_float32_product(cpu_ops.logits_linear(x[:rows], weight, None, packed), x[:rows], weight, None)
    assert skinny == [1] and amx == [8, 300]


@pytest.mark.parametrize("arch", ["smollm2", "llama"])
def test_a_bf16_model_computes_float32_logits(arch, tmp_path):
    """The tied head (smollm2: Embedding.logits) and an untied one (llama: Linear.logits), for 1, 8
    and 300 rows of bf16 hidden states, against the float32 product of the same bf16 weights."""
    save_tiny_model(arch, tmp_path)
    model = load_model(str(tmp_path), torch.bfloat16, 512).model
    weight = (model.embed_tokens if model.lm_head is None else model.lm_head).weight
    assert weight.dtype == torch.bfloat16
    hidden = torch.randn(300, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    hidden = hidden.to(torch.bfloat16)
    with torch.inference_mode():
        for rows in (1, 8, 300):
            _assert_float32_product(model.compute_logits(hidden[:rows]), hidden[:rows], weight, None)


def test_bf16_logits_keep_near_ties_apart():
    """Two logits 0.03 apart near 20: bf16 output (steps of 1/8 there) makes them equal; float32 keeps
    their order, whichever kernel runs."""
    weight = torch.zeros(32, 64, dtype=torch.bfloat16)
    weight[3, :2] = torch.tensor([20.0, 0.0])
    weight[7, :2] = torch.tensor([20.0, 0.03125])
    x = torch.zeros(300, 64, dtype=torch.bfloat16)
    x[:, :2] = 1.0
    packed = cpu_ops.pack_for_amx(weight, None)
    for rows in (1, 8, 300):
        assert (cpu_ops.linear(x[:rows], weight, None, packed)[:, 3]
                == cpu_ops.linear(x[:rows], weight, None, packed)[:, 7]).all()  # tied in bf16
        logits = cpu_ops.logits_linear(x[:rows], weight, None, packed)
        assert (logits[:, 7] - logits[:, 3] == 0.03125).all()
        assert (logits.argmax(-1) == 7).all()


def test_the_sampler_gets_float32_logits_from_a_bf16_model(tmp_path, monkeypatch):
    """Greedy and random rows (temperature, top-p, logprobs) sample from the head's float32 logits as
    they are: nothing widens or narrows them on the way."""
    from llmserve import LLM, SamplingParams

    save_tiny_model("smollm2", tmp_path)
    llm = LLM(str(tmp_path), dtype="bfloat16", num_kv_blocks=64, max_model_len=512)
    sampler = llm.engine.runner.sampler
    real, dtypes = sampler.sample, []
    monkeypatch.setattr(sampler, "sample", lambda logits, *args: (dtypes.append(logits.dtype), real(logits, *args))[1])
    params = [SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
              SamplingParams(temperature=0.8, top_p=0.9, seed=1, logprobs=2, max_tokens=4, ignore_eos=True)]
    outputs = llm.generate([{"prompt_token_ids": [5, 17, 42]}, {"prompt_token_ids": [8, 1, 200]}], params)
    assert [len(o.outputs[0].token_ids) for o in outputs] == [4, 4]
    assert dtypes and set(dtypes) == {torch.float32}


@pytest.mark.parametrize("rows", [1, 8, 300])
def test_a_head_made_a_chunk_at_a_time_gives_the_float32_product(rows, monkeypatch):
    """chunked_logits_linear (a quantized head dequantizing): chunks of 64 channels of 200, the last
    8 (not a whole AMX tile) through torch, the rest through amx_linear.c where it runs."""
    monkeypatch.setattr(cpu_ops, "LOGITS_CHUNK_CHANNELS", 64)
    x, weight, _ = _operands(rows, 200, 64, bias=False)
    asked = []

    def chunk(lo: int, hi: int) -> torch.Tensor:
        asked.append((lo, hi))
        return weight[lo:hi].clone()

    _assert_float32_product(cpu_ops.chunked_logits_linear(x, 200, chunk), x, weight, None)
    assert asked == [(0, 64), (64, 128), (128, 192), (192, 200)]
