"""Anonymous-mapping tensors: lazily zero-filled, and made resident on demand without changing them."""

from __future__ import annotations

import ctypes
import mmap

import pytest
import torch

from llmserve.model.memory import mapped_tensor, populate


def resident_pages(tensor: torch.Tensor) -> tuple[int, int]:
    """(resident, total) pages under the tensor, from mincore(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    start = tensor.data_ptr() // page * page
    length = tensor.data_ptr() + tensor.numel() * tensor.element_size() - start
    pages = -(-length // page)
    flags = (ctypes.c_ubyte * pages)()
    assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), flags) == 0
    return sum(f & 1 for f in flags), pages


def test_populate_makes_every_page_resident_and_keeps_the_contents():
    tensor = mapped_tensor((16, 1 << 20), torch.float32, huge_pages=False)  # 64 MiB
    tensor[3, 5] = 1.5
    tensor[15, -1] = -2.0
    before, total = resident_pages(tensor)
    assert before < total // 10  # untouched pages are not resident yet
    if not populate(tensor):
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    after, _ = resident_pages(tensor)
    assert after == total
    assert tensor[3, 5].item() == 1.5 and tensor[15, -1].item() == -2.0
    assert tensor.count_nonzero().item() == 2


def test_populate_refuses_what_it_cannot_do():
    assert not populate(torch.empty(0))
    assert not populate(torch.empty((2, 2), device="meta"))
