"""rms_norm and silu_and_mul against torch written the way HF's modules compute them."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from tests.backends.triton.paged import TOLERANCES


def _reference_rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h32 = h.float()
    return weight * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)


# Tolerances: fp32 sums the squares in another order (a few ulps); bf16 can then round the normalised
# value or the product one bf16 ulp apart.
@pytest.mark.parametrize(("hidden", "dtype"), [(64, torch.float32), (200, torch.bfloat16), (1024, torch.float32)])
def test_rms_norm(hidden: int, dtype: torch.dtype, device: torch.device) -> None:
    from llmserve.backends.triton import rms_norm

    gen = torch.Generator().manual_seed(hidden)
    x = (torch.randn(5, hidden, generator=gen) * 3).to(dtype).to(device)
    weight = (1 + torch.randn(hidden, generator=gen) / 4).to(dtype).to(device)
    out, residual = rms_norm(x, weight, 1e-6)
    assert residual is None and out.dtype == dtype
    torch.testing.assert_close(out, _reference_rms_norm(x, weight, 1e-6), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_with_residual(dtype: torch.dtype, device: torch.device) -> None:
    from llmserve.backends.triton import rms_norm

    gen = torch.Generator().manual_seed(1)
    hidden = 96
    # x as a column slice of a wider buffer: rows with a stride of their own.
    x = torch.randn(4, hidden + 32, generator=gen).to(dtype).to(device)[:, :hidden]
    residual = torch.randn(4, hidden, generator=gen).to(dtype).to(device)
    weight = torch.randn(hidden, generator=gen).to(dtype).to(device)
    h = x + residual  # rounded to dtype, as the contract says
    out, returned = rms_norm(x, weight, 1e-5, residual)
    assert returned is residual
    assert torch.equal(residual, h)  # the sum, written in place
    torch.testing.assert_close(out, _reference_rms_norm(h, weight, 1e-5), **TOLERANCES[dtype])


# I = 1100 spans two 1024-wide column tiles, the second partly masked.
@pytest.mark.parametrize(("inter", "dtype"), [(64, torch.float32), (1100, torch.bfloat16), (300, torch.float32)])
def test_silu_and_mul(inter: int, dtype: torch.dtype, device: torch.device) -> None:
    from llmserve.backends.triton import silu_and_mul

    gen = torch.Generator().manual_seed(inter)
    gate_up = (torch.randn(3, 2 * inter, generator=gen) * 4).to(dtype).to(device)
    gate, up = gate_up.chunk(2, dim=-1)
    out = silu_and_mul(gate_up)
    assert out.shape == (3, inter) and out.dtype == dtype
    # fp32: exp's last bit may differ from torch's; bf16: silu rounded one ulp apart at worst.
    torch.testing.assert_close(out, F.silu(gate) * up, **TOLERANCES[dtype])
