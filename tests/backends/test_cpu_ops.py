"""The C layer ops (rms_norm, silu_and_mul, rotate_and_store) against the torch code they replace."""

from __future__ import annotations

import pytest
import torch

from llmserve.backends import cpu_ops
from llmserve.backends.base import KVCacheSpec
from llmserve.backends.select import select_backend
from llmserve.model.kernels import layer_op_kernels
from llmserve.model.layers import Linear

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture
def torch_only(monkeypatch):
    """Runs a layer op down its pure-torch path."""

    def run(fn, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(cpu_ops, "layer_op_kernels", lambda _dtype: None)
            return fn(*args, **kwargs)

    return run


def _need_kernels(dtype: torch.dtype) -> None:
    if layer_op_kernels(str(dtype).removeprefix("torch.")) is None:
        pytest.skip("no C compiler")


def _assert_rounding_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal but for the last bit of a few elements (a sum taken in another order)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
        return
    differ = actual != expected
    assert differ.float().mean() < 0.01
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2 ** -6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [576, 100])
def test_rms_norm_with_and_without_residual(cols, dtype, torch_only):
    """A hidden size that is a multiple of the 16 lanes and one that is not."""
    _need_kernels(dtype)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(37, cols, generator=gen) * 3).to(dtype)
    residual = torch.randn(37, cols, generator=gen).to(dtype)
    weight = (1 + 0.1 * torch.randn(cols, generator=gen)).to(dtype)
    before = residual.clone()
    expected, expected_sum = torch_only(cpu_ops.rms_norm, x, weight, 1e-5, before)
    out, total = cpu_ops.rms_norm(x, weight, 1e-5, residual)
    assert torch.equal(total, x + before)  # one rounding of the sum, as torch's add
    assert total.data_ptr() == residual.data_ptr()  # written in place
    assert torch.equal(total, expected_sum)
    _assert_rounding_close(out, expected)
    plain, none = cpu_ops.rms_norm(x, weight, 1e-5)
    assert none is None
    _assert_rounding_close(plain, torch_only(cpu_ops.rms_norm, x, weight, 1e-5)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_rows_are_independent_of_the_batch(dtype):
    _need_kernels(dtype)
    x = torch.randn(300, 64).to(dtype)  # enough elements to run threaded
    weight = torch.ones(64, dtype=dtype)
    whole = cpu_ops.rms_norm(x, weight, 1e-6)[0]
    for row in (0, 151, 299):
        assert torch.equal(cpu_ops.rms_norm(x[row:row + 1].clone(), weight, 1e-6)[0][0], whole[row])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_falls_back_for_strided_input(dtype):
    x = torch.randn(64, 16).to(dtype).t()  # not contiguous: torch path
    weight = torch.ones(64, dtype=dtype)
    x32 = x.float()
    expected = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    torch.testing.assert_close(cpu_ops.rms_norm(x, weight, 1e-6)[0], expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "cols"), [(23, 1536), (3, 37), (64, 1536)])
def test_silu_and_mul(rows, cols, dtype, torch_only):
    """Widths that are and are not a multiple of the 16 lanes; enough rows to split among threads."""
    _need_kernels(dtype)
    gate_up = (torch.randn(rows, 2 * cols) * 4).to(dtype)
    expected = torch_only(cpu_ops.silu_and_mul, gate_up)
    _assert_rounding_close(cpu_ops.silu_and_mul(gate_up), expected)
    assert cpu_ops.silu_and_mul(gate_up).shape == (rows, cols)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("q_heads", "kv_heads", "dim"), [(9, 3, 64), (4, 4, 128), (6, 2, 16)])
def test_rotate_and_store(q_heads, kv_heads, dim, dtype, torch_only):
    _need_kernels(dtype)
    gen = torch.Generator().manual_seed(1)
    tokens, block = 11, 4
    qkv = torch.randn(tokens, q_heads + 2 * kv_heads, dim, generator=gen).to(dtype)
    qk, v = qkv[:, :q_heads + kv_heads], qkv[:, q_heads + kv_heads:]  # strided views, as the model passes
    positions = torch.randint(0, 500, (tokens,), generator=gen)
    freqs = positions.float().unsqueeze(1) * torch.rand(dim // 2, generator=gen)
    cos, sin = freqs.cos().unsqueeze(1), freqs.sin().unsqueeze(1)
    slots = torch.randperm(8 * block, generator=gen)[:tokens]
    spec = KVCacheSpec(1, kv_heads, dim, block, dtype)
    ours, reference = (select_backend("cpu").allocate_kv_cache(spec, 8)[0] for _ in range(2))
    q = cpu_ops.rotate_and_store(qk, v, cos, sin, ours, slots, q_heads)
    expected_q = torch_only(cpu_ops.rotate_and_store, qk, v, cos, sin, reference, slots, q_heads)
    assert q.shape == (tokens, q_heads, dim) and q.is_contiguous()
    assert torch.equal(q, expected_q)
    assert torch.equal(ours.key, reference.key) and torch.equal(ours.value, reference.value)
    assert torch.equal(ours.value[:, slots].transpose(0, 1), v)
    unused = torch.ones(8 * block, dtype=torch.bool)
    unused[slots] = False
    assert float(ours.key[:, unused].abs().sum()) == 0.0


@pytest.mark.parametrize("rows", [1, 2, 5, 16, 20, 37, 48, 64, 129, 256, 257])
@pytest.mark.parametrize(("out_features", "in_features", "bias"), [(960, 576, True), (576, 1536, False),
                                                                    (80, 96, True), (36, 64, False), (30, 48, True)])
def test_linear_matches_a_float32_product(rows, out_features, in_features, bias):
    """bf16 rows through the skinny kernel (1 row), the AMX kernel (2-256 rows, shapes it
    takes) or torch (the rest): each the float32 product of the bf16 operands, rounded once.
    The AMX shapes cover weight tiles in groups of 4 and 2 with a remainder (80 outputs: 5
    tiles), an odd number of 32-wide input steps (96), and partial and paired 16-row slabs."""
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, in_features, generator=gen).to(torch.bfloat16)
    weight = torch.randn(out_features, in_features, generator=gen).to(torch.bfloat16)
    b = torch.randn(out_features, generator=gen).to(torch.bfloat16) if bias else None
    expected = torch.nn.functional.linear(x.float(), weight.float(), None if b is None else b.float())
    out = cpu_ops.linear(x, weight, b, cpu_ops.pack_for_amx(weight, None))
    assert out.dtype == torch.bfloat16 and out.shape == (rows, out_features)
    torch.testing.assert_close(out.float(), expected, rtol=2 ** -7, atol=1e-3)


@pytest.mark.parametrize("rows", [1, 3, 4, 37, 64, 65])
@pytest.mark.parametrize(("out_features", "in_features", "bias"), [(960, 576, True), (576, 1536, False),
                                                                    (36, 64, False), (30, 48, True)])
def test_float32_linear_matches_torch(rows, out_features, in_features, bias):
    """float32 rows through skinny_linear.c (up to 64 rows, shapes it takes: 4-row tiles with
    1-3 rows left over) or torch: equal but for the order of the sums."""
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, in_features, generator=gen)
    weight = torch.randn(out_features, in_features, generator=gen)
    b = torch.randn(out_features, generator=gen) if bias else None
    expected = torch.nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    out = cpu_ops.linear(x, weight, b)
    assert out.dtype == torch.float32 and out.shape == (rows, out_features)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)


def _record_rows(monkeypatch, kernel_name: str) -> list[int]:
    """The row counts each call of cpu_ops' `kernel_name` kernel gets from now on."""
    real = getattr(cpu_ops, kernel_name)()
    if real is None:
        pytest.skip(f"no C compiler, or the CPU cannot run {kernel_name}")
    calls: list[int] = []
    monkeypatch.setattr(cpu_ops, kernel_name, lambda: lambda *args: (calls.append(args[4]), real(*args)))
    return calls


def test_float32_linear_takes_the_kernel_up_to_64_rows(monkeypatch):
    calls = _record_rows(monkeypatch, "skinny_linear_f32")
    weight = torch.randn(64, 64)
    for rows in (1, 64, 65):
        cpu_ops.linear(torch.randn(rows, 64), weight)
    cpu_ops.linear(torch.randn(2, 64).t().contiguous().t(), weight)  # strided x: torch
    assert calls == [1, 64]


def test_linear_takes_the_skinny_kernel_for_one_row(monkeypatch):
    calls = _record_rows(monkeypatch, "skinny_linear_bf16")
    weight = torch.randn(64, 64).to(torch.bfloat16)
    for rows in (1, 2, 3):
        cpu_ops.linear(torch.randn(rows, 64).to(torch.bfloat16), weight)
    cpu_ops.linear(torch.randn(1, 64), weight.float())  # float32: not the bf16 kernel
    assert calls == [1]


def test_projection_packs_its_weight_once_and_again_when_it_changes():
    if cpu_ops.amx_linear_kernels() is None:
        pytest.skip("no C compiler or no AMX")
    backend = select_backend("cpu")
    layer = Linear(64, 32, backend).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.normal_()
    x = torch.randn(8, 64).to(torch.bfloat16)
    assert backend._packed.get(layer) is None
    torch.testing.assert_close(layer(x).float(), x.float() @ layer.weight.float().T, rtol=2 ** -7, atol=1e-3)
    first = backend._packed.get(layer)
    assert first is not None
    layer(x)
    assert backend._packed.get(layer) is first
    with torch.no_grad():
        layer.weight.mul_(2)  # in place: the packing is stale
    torch.testing.assert_close(layer(x).float(), x.float() @ layer.weight.float().T, rtol=2 ** -7, atol=1e-3)
    assert backend._packed.get(layer) is not first
    layer(x[:1])  # one row: the skinny kernel reads the weight as it is, no packing needed
    layer.float()(x.float())  # float32: torch, nothing packed
