"""CUDA graphs for steps that only decode: captured once at start, replayed every such step.

A decode step of B sequences replays the graph captured for the smallest batch size >= B (1, 2, 4,
8, then every 8 up to max_num_seqs), with the rows past B padded: slot -1 (nothing stored) and
sequence length 0 (nothing attended). The step's inputs go through persistent pinned host buffers
into persistent device buffers that the graphs read, one asynchronous copy each; nothing in a
replay waits for the host, so the step's only sync is the sampler reading its tokens.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from llmserve.backends.base import LayerKVCache
from llmserve.runner.step_batch import StepBatch

if TYPE_CHECKING:
    from llmserve.backends.cuda import CudaBackend, PagedMetadata


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [n for n in (1, 2, 4, 8) if n <= max_num_seqs] + list(range(16, max_num_seqs + 1, 8))
    if sizes[-1] != max_num_seqs:
        sizes.append(max_num_seqs)
    return sizes


class StepBuffers:
    """A decode step's inputs for up to `rows` sequences, on the host (pinned) and on the device."""

    def __init__(self, rows: int, width: int, device: torch.device) -> None:
        pin = device.type == "cuda"
        self.width = width
        self.host = {name: torch.zeros(shape, dtype=dtype, pin_memory=pin) for name, (shape, dtype) in
                     _layout(rows, width).items()}
        self.device = {name: torch.zeros_like(t, device=device) for name, t in self.host.items()}
        self.device["query_start_loc"].copy_(torch.arange(rows + 1, dtype=torch.int32))
        # Set when the last step's copies have run: a step that samples nothing never waits on the
        # device, so the next one must not overwrite pinned inputs still queued for copying.
        self._copied = torch.cuda.Event() if pin else None

    def load(self, batch: StepBatch, rows: int) -> None:
        """Stage `batch` into the first `rows` rows (the rest padding) and start the copies. Table
        columns past the batch's width, and padding rows' tables, keep stale ids: no kernel reads a
        column at or past ceil(seq_len / block_size), and a padding row's sequence length is 0."""
        if self._copied is not None:
            self._copied.synchronize()
        n, width = batch.num_seqs, batch.block_table.shape[1]
        host = self.host
        host["input_ids"][:n] = batch.input_ids
        host["input_ids"][n:rows] = 0
        host["positions"][:n] = batch.positions
        host["positions"][n:rows] = 0
        host["slot_mapping"][:n] = batch.slot_mapping
        host["slot_mapping"][n:rows] = -1
        host["seq_lens"][:n] = batch.seq_lens
        host["seq_lens"][n:rows] = 0
        host["block_table"][:n, :width] = batch.block_table
        for name in ("input_ids", "positions", "slot_mapping", "seq_lens", "block_table"):
            self.device[name][:rows].copy_(host[name][:rows], non_blocking=True)
        if self._copied is not None:
            self._copied.record()


def _layout(rows: int, width: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {"input_ids": ((rows,), torch.long), "positions": ((rows,), torch.long),
            "slot_mapping": ((rows,), torch.long), "seq_lens": ((rows,), torch.int32),
            "block_table": ((rows, width), torch.int32), "query_start_loc": ((rows + 1,), torch.int32)}


class DecodeGraphs:
    def __init__(self, backend: CudaBackend, model: nn.Module, kv_caches: list[LayerKVCache], max_num_seqs: int,
                 max_blocks_per_seq: int, block_size: int) -> None:
        start = time.perf_counter()
        self.sizes = capture_sizes(max_num_seqs)
        self.max_blocks = max_blocks_per_seq
        self.buffers = StepBuffers(self.sizes[-1], max_blocks_per_seq, backend.device)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._device = backend.device
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for size in reversed(self.sizes):  # largest first: the smaller ones reuse its memory
                self._graphs[size] = self._capture(model, kv_caches, size, pool)
        torch.cuda.synchronize(backend.device)
        self.capture_seconds = time.perf_counter() - start

    def _metadata(self, size: int) -> PagedMetadata:
        from llmserve.backends.cuda import PagedMetadata

        d = self.buffers.device
        return PagedMetadata(d["slot_mapping"][:size], d["block_table"][:size], d["seq_lens"][:size],
                             d["query_start_loc"][:size + 1], max_query_len=1, decode_only=True)

    def _capture(self, model: nn.Module, kv_caches: list[LayerKVCache], size: int,
                 pool: tuple[int, int]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        d = self.buffers.device
        d["slot_mapping"][:size].fill_(-1)  # padding values: the warm-up run stores and attends nothing
        d["seq_lens"][:size].zero_()
        args = (d["input_ids"][:size], d["positions"][:size], kv_caches, self._metadata(size))
        model(*args)  # compiles the Triton kernels for this shape outside the capture
        torch.cuda.synchronize(self._device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            hidden = model(*args)
        return graph, hidden

    def fits(self, batch: StepBatch) -> bool:
        return batch.num_seqs <= self.sizes[-1] and batch.block_table.shape[1] <= self.max_blocks

    def replay(self, batch: StepBatch) -> torch.Tensor:
        """Hidden states of the batch's sequences, one row each."""
        size = next(s for s in self.sizes if s >= batch.num_seqs)
        self.buffers.load(batch, size)
        graph, hidden = self._graphs[size]
        graph.replay()
        return hidden[:batch.num_seqs]
