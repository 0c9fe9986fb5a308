"""Turns the scheduler's choice for one step into the flat tensors one forward pass needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmserve.engine.request import Request
from llmserve.model.attention import AttentionGroup, AttentionMetadata


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attention: AttentionMetadata
    logits_indices: torch.Tensor  # [S] row of the batch whose logits are sampled
    sampled_requests: list[Request]  # the S requests that produce a token this step


def build_inputs(scheduled: list[tuple[Request, int]], block_size: int, device: torch.device) -> ModelInputs:
    """`scheduled` must list single-token (decode) entries first, as the scheduler does."""
    token_ids: list[int] = []
    starts: list[int] = []
    lengths: list[int] = []
    logits_rows: list[int] = []
    sampled: list[Request] = []
    for request, num_new in scheduled:
        start = request.num_computed_tokens
        token_ids += request.token_slice(start, start + num_new)
        starts.append(start)
        lengths.append(num_new)
        if start + num_new == request.num_tokens:
            logits_rows.append(len(token_ids) - 1)
            sampled.append(request)
    requests = [r for r, _ in scheduled]
    query_lens = torch.tensor(lengths)
    start_positions = torch.tensor(starts)
    context_lens = start_positions + query_lens
    positions = _positions(start_positions, query_lens)
    block_tables = _block_tables(requests)
    seq_of_token = torch.repeat_interleave(torch.arange(len(requests)), query_lens)
    slots = block_tables[seq_of_token, positions // block_size] * block_size + positions % block_size
    num_decodes = sum(1 for n in lengths if n == 1)
    # All decodes form one group (one kernel call); each prefill chunk is a group of its own. A
    # shared prefill group would pad every chunk to the longest query and the longest context,
    # and a chunk alone that starts a prompt needs no mask, so attention can skip the masked
    # half. Chunks per step are few (the token budget bounds them), so the loop is short.
    spans = [(0, num_decodes)] if num_decodes else []
    spans += [(i, i + 1) for i in range(num_decodes, len(requests))]
    groups = [_group(block_tables[lo:hi], query_lens[lo:hi], context_lens[lo:hi], block_size) for lo, hi in spans]
    _place_groups(groups, lengths)
    meta = AttentionMetadata(slot_mapping=slots.to(device), groups=[_to(g, device) for g in groups])
    return ModelInputs(
        input_ids=torch.tensor(token_ids, device=device),
        positions=positions.to(device),
        attention=meta,
        logits_indices=torch.tensor(logits_rows, dtype=torch.long, device=device),
        sampled_requests=sampled,
    )


def _positions(starts: torch.Tensor, query_lens: torch.Tensor) -> torch.Tensor:
    total = int(query_lens.sum())
    first_row = torch.cumsum(query_lens, 0) - query_lens
    offset_in_seq = torch.arange(total) - torch.repeat_interleave(first_row, query_lens)
    return torch.repeat_interleave(starts, query_lens) + offset_in_seq


def _block_tables(requests: list[Request]) -> torch.Tensor:
    # Padded in Python and converted once: one small tensor per request per step adds up.
    width = max(len(r.block_ids) for r in requests)
    return torch.tensor([r.block_ids + [0] * (width - len(r.block_ids)) for r in requests], dtype=torch.long)


def _group(block_tables: torch.Tensor, query_lens: torch.Tensor, context_lens: torch.Tensor,
           block_size: int) -> AttentionGroup:
    num_seqs = len(query_lens)
    max_q = int(query_lens.max())
    num_blocks = -(-int(context_lens.max()) // block_size)
    key_len = num_blocks * block_size
    # Query row i of a sequence sits at absolute position ctx - qlen + i and sees keys up to it;
    # padded rows repeat the last real row so no row is fully masked (that would give NaN).
    rows = torch.arange(max_q).unsqueeze(0).minimum(query_lens.unsqueeze(1) - 1)
    query_pos = (context_lens - query_lens).unsqueeze(1) + rows
    mask: torch.Tensor | None = None
    if num_seqs > 1 or int(context_lens[0]) != max_q:
        mask = (torch.arange(key_len).view(1, 1, -1) <= query_pos.unsqueeze(-1)).unsqueeze(1)
    token_index = real_rows = None
    if bool((query_lens != max_q).any()):
        first = torch.cumsum(query_lens, 0) - query_lens
        token_index = (first.unsqueeze(1) + rows).reshape(-1)
        is_real = torch.arange(max_q).unsqueeze(0) < query_lens.unsqueeze(1)
        real_rows = torch.nonzero(is_real.reshape(-1)).squeeze(1)
    return AttentionGroup(start=0, end=0, num_seqs=num_seqs, max_query_len=max_q,
                          block_tables=block_tables[:, :num_blocks].contiguous(), mask=mask,
                          context_lens=context_lens.contiguous(),
                          token_index=token_index, real_rows=real_rows)


def _place_groups(groups: list[AttentionGroup], lengths: list[int]) -> None:
    offset = 0
    seq = 0
    for group in groups:
        group.start = offset
        offset += sum(lengths[seq:seq + group.num_seqs])
        seq += group.num_seqs
        group.end = offset


def _to(group: AttentionGroup, device: torch.device) -> AttentionGroup:
    if device.type == "cpu":
        return group
    return AttentionGroup(group.start, group.end, group.num_seqs, group.max_query_len,
                          _move(group.block_tables, device), _move(group.mask, device),
                          _move(group.context_lens, device),
                          _move(group.token_index, device), _move(group.real_rows, device))


def _move(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device, non_blocking=True)
