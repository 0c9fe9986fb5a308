"""What a replayed decode graph reads: the batch sizes captured, and the step's inputs staged into the
persistent buffers with the padding rows made inert (nothing stored, nothing attended)."""

from __future__ import annotations

import torch

from llmserve.backends.cuda_graphs import StepBuffers, capture_sizes
from llmserve.engine.scheduler_output import ScheduledSequence, SchedulerOutput
from llmserve.runner.step_batch import build_step_batch


def test_capture_sizes_are_one_two_four_eight_then_every_eight():
    assert capture_sizes(256) == [1, 2, 4, 8] + list(range(16, 257, 8))
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert capture_sizes(3) == [1, 2, 3]


def test_a_decode_step_is_staged_with_inert_padding_rows():
    buffers = StepBuffers(rows=8, width=6, device=torch.device("cpu"))
    wide = SchedulerOutput([ScheduledSequence([7], 40, [3, 9, 4], None), ScheduledSequence([8], 20, [5, 1], None),
                            ScheduledSequence([9], 5, [2], None), ScheduledSequence([6], 1, [0], None),
                            ScheduledSequence([5], 0, [8], None)])
    buffers.load(build_step_batch(wide, block_size=16), rows=8)
    step = SchedulerOutput([ScheduledSequence([11], 33, [3, 9, 4], None), ScheduledSequence([12], 17, [5, 1], None)])
    buffers.load(build_step_batch(step, block_size=16), rows=4)  # a smaller step after a larger one
    d = buffers.device
    assert d["input_ids"][:4].tolist() == [11, 12, 0, 0]
    assert d["positions"][:4].tolist() == [33, 17, 0, 0]
    assert d["slot_mapping"][:4].tolist() == [4 * 16 + 1, 1 * 16 + 1, -1, -1]
    assert d["seq_lens"][:4].tolist() == [34, 18, 0, 0]
    # Only the columns a row attends are read: the first ceil(seq_len / 16) of each real row.
    assert d["block_table"][0, :3].tolist() == [3, 9, 4] and d["block_table"][1, :2].tolist() == [5, 1]
    assert d["query_start_loc"].tolist() == list(range(9))
