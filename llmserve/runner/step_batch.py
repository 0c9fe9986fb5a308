"""One step's device-neutral inputs: flat token ids and positions, and the paged-KV addressing that
every attention backend builds its own metadata from (query lengths, sequence lengths, block table,
slot mapping). Built on the host, once per step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmserve.engine.scheduler_output import SchedulerOutput
from llmserve.runner.prompt_rows import KeptRows


@dataclass(frozen=True)
class StepBatch:
    input_ids: torch.Tensor  # [T] long: all sequences' tokens of this step, back to back
    positions: torch.Tensor  # [T] long
    slot_mapping: torch.Tensor  # [T] long: the KV slot (block * block_size + offset) of each token
    query_lens: torch.Tensor  # [B] long: tokens each sequence computes this step
    seq_lens: torch.Tensor  # [B] long: keys each sequence attends (cached + this step's)
    block_table: torch.Tensor  # [B, W] long, padded with block 0 (never attended)
    num_decodes: int  # the first num_decodes sequences compute one token each
    logits_indices: torch.Tensor  # [S] long: rows whose hidden states are wanted, ascending
    block_size: int

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def is_decode_only(self) -> bool:
        return self.num_decodes == self.num_seqs

    @property
    def query_start_loc(self) -> torch.Tensor:
        """[B + 1]: where each sequence's tokens begin in the flat batch, then the total."""
        return torch.cat((torch.zeros(1, dtype=torch.long), torch.cumsum(self.query_lens, 0)))


def build_step_batch(output: SchedulerOutput, block_size: int, all_logits: bool = False,
                     kept: KeptRows | None = None) -> StepBatch:
    """The step's inputs; hidden states are wanted for the `kept` rows (by default each sequence's
    sampled row, prompt-logprob rows and pooled rows: prompt_rows.KeptRows), or for every row with
    `all_logits` (scoring a text)."""
    token_ids: list[int] = []
    starts: list[int] = []
    lengths: list[int] = []
    for seq in output.sequences:
        token_ids += seq.token_ids
        starts.append(seq.start)
        lengths.append(seq.num_tokens)
    query_lens = torch.tensor(lengths)
    start_positions = torch.tensor(starts)
    positions = _positions(start_positions, query_lens)
    block_table = _block_table([seq.block_ids for seq in output.sequences])
    seq_of_token = torch.repeat_interleave(torch.arange(len(lengths)), query_lens)
    slots = block_table[seq_of_token, positions // block_size] * block_size + positions % block_size
    if all_logits:
        logits_indices = torch.arange(len(token_ids))
    else:
        rows = (kept or KeptRows.of(output)).flat_rows(output)
        logits_indices = torch.tensor(rows, dtype=torch.long)
    return StepBatch(
        input_ids=torch.tensor(token_ids), positions=positions, slot_mapping=slots, query_lens=query_lens,
        seq_lens=start_positions + query_lens, block_table=block_table, num_decodes=output.num_decodes,
        logits_indices=logits_indices, block_size=block_size,
    )


def _positions(starts: torch.Tensor, query_lens: torch.Tensor) -> torch.Tensor:
    total = int(query_lens.sum())
    first_row = torch.cumsum(query_lens, 0) - query_lens
    offset_in_seq = torch.arange(total) - torch.repeat_interleave(first_row, query_lens)
    return torch.repeat_interleave(starts, query_lens) + offset_in_seq


def _block_table(block_ids: list[list[int]]) -> torch.Tensor:
    # Padded in Python and converted once: one small tensor per sequence per step adds up.
    width = max(len(ids) for ids in block_ids)
    return torch.tensor([ids + [0] * (width - len(ids)) for ids in block_ids], dtype=torch.long)
