"""Batched, on-device token sampling.

Pipeline per step (rows that don't need a stage skip it):
  penalties -> blocked ids (min_tokens) -> grammar mask -> logprobs -> greedy argmax
  -> temperature -> top-k / top-p -> min-p -> exponential-race draw.

A row that verifies a speculative draft x (one-hot draft distribution) keeps x with probability
p(x) under the row's final distribution p, and otherwise draws from p with x removed: the standard
rejection sampler, whose token is distributed exactly as p (spec_decode/acceptance.py). Greedy rows
need nothing: their argmax is compared with the draft by the caller.

Logprobs are taken after penalties and blocking but before temperature and
truncation: they describe the model's (penalised) distribution rather than
the sampling-shaped one, so they stay comparable across temperatures and
never collapse to -inf for tokens that top-k/top-p happened to cut.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmserve.engine.outputs import TokenLogprobs
from llmserve.sampling_params import SamplingParams
from llmserve.structured.guide import Guide, apply_guides


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


class Sampler:
    def __init__(self, seed: int | None = None) -> None:
        self._seed = random.getrandbits(63) if seed is None else seed
        # One shared generator per device, for rows that bring no generator.
        self._generators: dict[torch.device, torch.Generator] = {}

    def sample(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        prompt_token_ids: Sequence[Sequence[int]],
        output_token_ids: Sequence[Sequence[int]],
        generators: Sequence[torch.Generator | None],
        blocked_token_ids: Sequence[Sequence[int]] | None = None,
        guides: Sequence[Guide | None] | None = None,
        draft_token_ids: Sequence[int | None] | None = None,
    ) -> SamplerOutput:
        """Pick one token per row of `logits` ([B, V]; float32 ones are modified in place).

        `blocked_token_ids[i]` are ids row i may not pick this step (the engine
        passes EOS/stop ids while min_tokens is not reached); `guides[i]`, when
        set, is row i's grammar, which masks every token it does not allow. Logits
        in another dtype are widened to float32 unless every row is a plain greedy pick.
        """
        assert logits.dim() == 2 and logits.shape[0] == len(params)
        guided = guides is not None and any(g is not None for g in guides)
        if logits.dtype != torch.float32 and (guided or not _argmax_only(params, blocked_token_ids)):
            logits = logits.float()
        _apply_penalties(logits, params, prompt_token_ids, output_token_ids)
        if guided:
            apply_guides(logits, guides)  # type: ignore[arg-type]
        if blocked_token_ids is not None:
            _apply_blocked(logits, blocked_token_ids, guides if guided else None)

        greedy = [p.is_greedy for p in params]
        token_ids = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
        greedy_rows = [i for i, g in enumerate(greedy) if g]
        random_rows = [i for i, g in enumerate(greedy) if not g]
        # Logprobs need the pre-temperature logits, which the random path overwrites.
        logprobs = _compute_logprob_inputs(logits, params)
        if not random_rows:
            token_ids = _argmax(logits)
        else:
            if greedy_rows:
                idx = _index(greedy_rows, logits.device)
                token_ids[idx] = _argmax(logits[idx])
            idx = _index(random_rows, logits.device)
            sub_params = [params[i] for i in random_rows]
            sub_gens = [generators[i] for i in random_rows]
            sub_drafts = None if draft_token_ids is None else [draft_token_ids[i] for i in random_rows]
            token_ids[idx] = self._sample_random(logits[idx], sub_params, sub_gens, sub_drafts)
        ids = token_ids.tolist()
        return SamplerOutput(token_ids=ids, logprobs=_finish_logprobs(logprobs, token_ids, ids, params))

    def _sample_random(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
        drafts: Sequence[int | None] | None = None,
    ) -> torch.Tensor:
        temps = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=logits.device)
        logits.div_(temps.unsqueeze(1))
        _apply_top_k_top_p(logits, params)
        probs = logits.softmax(dim=-1)
        _apply_min_p(probs, params)
        kept = None
        if drafts is not None and any(d is not None for d in drafts):
            kept = self._test_drafts(probs, generators, drafts)
        noise = self._exponential_noise(probs, generators)
        # Exponential race: argmax(p_i / E_i) with E_i ~ Exp(1) picks i with
        # probability p_i, and needs no cumsum/renormalisation of probs.
        tokens = _argmax(probs.div_(noise))
        if kept is not None:
            rows, draft_ids = kept
            tokens[rows] = draft_ids
        return tokens

    def _test_drafts(self, probs: torch.Tensor, generators: Sequence[torch.Generator | None],
                     drafts: Sequence[int | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Accept each row's draft x with probability p(x); remove x from the rows that reject it, so
        their draw is from the rest of p. The rows that keep their draft and those drafts."""
        rows = [i for i, d in enumerate(drafts) if d is not None]
        idx = _index(rows, probs.device)
        draft_ids = _index([drafts[i] for i in rows], probs.device)
        # min-p zeroes tokens without renormalising: p(x) is relative to what is left.
        p_draft = probs[idx, draft_ids] / probs[idx].sum(dim=-1)
        uniform = torch.empty(len(rows), dtype=probs.dtype, device=probs.device)
        shared = self._shared_generator(probs.device)
        for j, i in enumerate(rows):  # a seeded row draws from its own generator, as its noise does
            g = generators[i]
            uniform[j] = torch.rand(1, dtype=probs.dtype, generator=g if g is not None else shared,
                                    device=g.device if g is not None else probs.device).item()
        accept = uniform < p_draft
        rejected = ~accept
        probs[idx[rejected], draft_ids[rejected]] = 0.0
        return idx[accept], draft_ids[accept]

    def _exponential_noise(
        self, probs: torch.Tensor, generators: Sequence[torch.Generator | None]
    ) -> torch.Tensor:
        noise = torch.empty_like(probs)
        shared = [i for i, g in enumerate(generators) if g is None]
        if shared:
            idx = _index(shared, probs.device)
            draw = torch.empty(len(shared), probs.shape[1], dtype=probs.dtype, device=probs.device)
            noise[idx] = draw.exponential_(generator=self._shared_generator(probs.device))
        # Seeded rows draw only from their own generator so their tokens don't
        # depend on which other requests share the batch.
        for i, g in enumerate(generators):
            if g is not None:
                row = torch.empty(probs.shape[1], dtype=probs.dtype, device=g.device)
                noise[i] = row.exponential_(generator=g).to(probs.device)
        # An exact 0 draw would turn p/E into inf or nan.
        return noise.clamp_min_(torch.finfo(noise.dtype).tiny)

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(self._seed)
            self._generators[device] = gen
        return gen


def _argmax_only(params: Sequence[SamplingParams], blocked_token_ids: Sequence[Sequence[int]] | None) -> bool:
    """Whether every row just takes its largest logit: greedy, no penalties, logprobs or blocked ids."""
    return (all(p.is_greedy and not p.has_penalties and p.logprobs is None for p in params)
            and (blocked_token_ids is None or not any(blocked_token_ids)))


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    # max(dim).indices is argmax (the first of tied maxima, as both document) at 2.5x its speed
    # on CPU: 0.7 against 1.7 ms for 48 rows of 49,152.
    return logits.max(dim=-1).indices


def _index(rows: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def _padded_ids(seqs: Sequence[Sequence[int]], pad: int, device: torch.device) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=0)
    rows = [list(s) + [pad] * (width - len(s)) for s in seqs]
    return torch.tensor(rows, dtype=torch.long, device=device).reshape(len(seqs), width)


def _token_counts(seqs: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[R, V] occurrence counts; padding goes to an extra column we drop."""
    ids = _padded_ids(seqs, vocab, device)
    counts = torch.zeros(len(seqs), vocab + 1, dtype=torch.float32, device=device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    return counts[:, :vocab]


def _apply_penalties(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    prompt_token_ids: Sequence[Sequence[int]],
    output_token_ids: Sequence[Sequence[int]],
) -> None:
    rows = [i for i, p in enumerate(params) if p.has_penalties]
    if not rows:
        return
    device, vocab = logits.device, logits.shape[1]
    idx = _index(rows, device)
    sub = logits[idx]
    out_counts = _token_counts([output_token_ids[i] for i in rows], vocab, device)

    rep = torch.tensor([params[i].repetition_penalty for i in rows], device=device).unsqueeze(1)
    seen = out_counts > 0
    seen |= _token_counts([prompt_token_ids[i] for i in rows], vocab, device) > 0
    # HF semantics: shrink toward zero from either side, so a penalty > 1
    # always makes a seen token less likely regardless of its logit's sign.
    penalised = torch.where(sub > 0, sub / rep, sub * rep)
    sub = torch.where(seen, penalised, sub)

    freq = torch.tensor([params[i].frequency_penalty for i in rows], device=device).unsqueeze(1)
    pres = torch.tensor([params[i].presence_penalty for i in rows], device=device).unsqueeze(1)
    sub -= freq * out_counts + pres * (out_counts > 0).to(sub.dtype)
    logits[idx] = sub


def _apply_blocked(logits: torch.Tensor, blocked_token_ids: Sequence[Sequence[int]],
                   guides: Sequence[Guide | None] | None = None) -> None:
    """min_tokens: the blocked ids get -inf, except on a guided row whose grammar (already applied)
    allows nothing else: a finished grammar wins over min_tokens, as nothing valid could follow."""
    rows: list[int] = []
    cols: list[int] = []
    for i, ids in enumerate(blocked_token_ids):
        if ids and (guides is None or guides[i] is None or _allows_more_than(logits[i], ids)):
            rows.extend([i] * len(ids))
            cols.extend(ids)
    if not rows:
        return
    logits[_index(rows, logits.device), _index(cols, logits.device)] = float("-inf")


def _allows_more_than(row: torch.Tensor, ids: Sequence[int]) -> bool:
    allowed = row > float("-inf")
    allowed[_index(list(ids), row.device)] = False
    return bool(allowed.any())


def _apply_top_k_top_p(logits: torch.Tensor, params: Sequence[SamplingParams]) -> None:
    vocab = logits.shape[1]
    ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    use_p = any(p.top_p < 1.0 for p in params)
    width = max(ks)
    if width == vocab and not use_p:
        return
    # Only the `width` best tokens of any row can survive, so when every row
    # has a top-k a partial topk replaces the full-vocabulary sort.
    if width < vocab:
        sorted_logits, order = logits.topk(width, dim=-1)
    else:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
    positions = torch.arange(width, device=logits.device).unsqueeze(0)
    remove = positions >= torch.tensor(ks, device=logits.device).unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    if use_p:
        # inf for disabled rows: a cumsum rounding to 1.0 must not cut their tail.
        top_ps = [p.top_p if p.top_p < 1.0 else float("inf") for p in params]
        ps = torch.tensor(top_ps, dtype=logits.dtype, device=logits.device)
        probs = sorted_logits.softmax(dim=-1)
        # Mass strictly before each token; keep it while that is below top_p,
        # which always keeps the most likely token.
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits.masked_fill_(mass_before >= ps.unsqueeze(1), float("-inf"))
    filtered = torch.full_like(logits, float("-inf"))
    logits.copy_(filtered.scatter_(1, order, sorted_logits))


def _apply_min_p(probs: torch.Tensor, params: Sequence[SamplingParams]) -> None:
    if not any(p.min_p > 0.0 for p in params):
        return
    min_p = torch.tensor([p.min_p for p in params], dtype=probs.dtype, device=probs.device)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    # Zeroed tokens can't win the exponential race, so no renormalisation needed.
    probs.masked_fill_(probs < threshold, 0.0)


@dataclass
class _LogprobInputs:
    rows: list[int]
    logprobs: torch.Tensor  # [len(rows), V]


def _compute_logprob_inputs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> _LogprobInputs | None:
    rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    if not rows:
        return None
    sub = logits if len(rows) == len(params) else logits[_index(rows, logits.device)]
    return _LogprobInputs(rows=rows, logprobs=torch.log_softmax(sub, dim=-1))


def _finish_logprobs(
    inputs: _LogprobInputs | None,
    token_ids: torch.Tensor,
    ids: list[int],
    params: Sequence[SamplingParams],
) -> list[TokenLogprobs | None]:
    result: list[TokenLogprobs | None] = [None] * len(params)
    if inputs is None:
        return result
    lp = inputs.logprobs
    chosen_ids = token_ids[_index(inputs.rows, lp.device)].unsqueeze(1)
    chosen = lp.gather(1, chosen_ids)
    # Rank counts strictly better tokens, so ties share the better rank.
    ranks = (lp > chosen).sum(dim=-1) + 1
    n_top = max(params[i].logprobs or 0 for i in inputs.rows)
    top_vals, top_ids = lp.topk(min(n_top, lp.shape[1]), dim=-1)
    # One device->host transfer per tensor instead of one per row.
    chosen_l, ranks_l = chosen.squeeze(1).tolist(), ranks.tolist()
    top_vals_l, top_ids_l = top_vals.tolist(), top_ids.tolist()
    for j, row in enumerate(inputs.rows):
        n = params[row].logprobs or 0
        top = list(zip(top_ids_l[j][:n], top_vals_l[j][:n], strict=True))
        result[row] = TokenLogprobs(token_id=ids[row], logprob=chosen_l[j], rank=ranks_l[j], top=top)
    return result
