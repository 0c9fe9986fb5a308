"""What a front must know about the engine its replicas run, reported once by a replica.

The front prepares requests itself (tokenize, validate, compile a grammar), so a bad request is a
400 before it is routed, and computes the routing key from the same block hashes as the engines'
prefix caches. Everything here pickles: it crosses from a replica's process to the front's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmserve.engine.outputs import EngineStats
from llmserve.engine.preparer import RequestPreparer

if TYPE_CHECKING:
    from llmserve.engine.engine import LLMEngine
    from llmserve.model.tokenizer import Tokenizer
    from llmserve.service_classes import ServiceClasses


@dataclass(frozen=True)
class EngineFacts:
    tokenizer: Tokenizer | None
    service_classes: ServiceClasses
    scheduling_policy: str
    model_identity: str
    max_model_len: int
    vocab_size: int
    hidden_size: int  # an embedding's length
    eos_token_ids: tuple[int, ...]
    pool_tokens: int
    block_size: int
    prefix_root: bytes | None  # the prefix cache's hash-chain root; None with prefix caching off

    @classmethod
    def of(cls, engine: LLMEngine) -> EngineFacts:
        blocks = engine.block_manager
        cache = blocks.prefix_cache
        return cls(engine.tokenizer, engine.scheduler_config.service_classes, engine.scheduler_config.policy,
                   engine.model_identity, engine.max_model_len, engine.model_config.vocab_size,
                   engine.model_config.hidden_size,
                   tuple(engine.model_config.eos_token_ids), blocks.num_blocks * blocks.block_size,
                   blocks.block_size, cache.root if cache is not None else None)

    def preparer(self) -> RequestPreparer:
        grammars = None
        if self.tokenizer is not None:
            from llmserve.structured.compiler import GrammarCompiler  # xgrammar: only when a tokenizer can use it

            grammars = GrammarCompiler(self.tokenizer, self.vocab_size, self.eos_token_ids)
        return RequestPreparer(self.tokenizer, self.service_classes, self.max_model_len, self.vocab_size,
                               self.pool_tokens, grammars)


@dataclass(frozen=True)
class ReplicaSnapshot:
    """One replica's answer to the front's poll."""

    name: str  # Ray Serve's replica id, as the X-Replica header and the metrics' `replica` label say it
    pid: int  # its process, for an operator (or a test) to find it
    stats: EngineStats
