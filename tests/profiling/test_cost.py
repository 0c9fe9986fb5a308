"""The analytical FLOPs and bytes behind the GB/s, GFLOP/s and roofline columns."""

from __future__ import annotations

import pytest
import torch

from llmserve.config import ModelConfig
from llmserve.profiling import categories as cat
from llmserve.profiling.cost import Cost, ModelShapes, step_costs
from llmserve.profiling.roofline import Roofline
from llmserve.runner.step_batch import StepBatch

CONFIG = ModelConfig(architecture="LlamaForCausalLM", vocab_size=1000, hidden_size=64, intermediate_size=128,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6,
                     rope_theta=1e4, max_position_embeddings=512)
LINEAR_WEIGHTS = 64 * (64 + 2 * 32) + 64 * 64 + 64 * 256 + 128 * 64  # qkv, o, gate_up, down per layer


def _shapes() -> ModelShapes:
    return ModelShapes(CONFIG, act_bytes=4, kv_bytes=4, linear_weight_bytes=4 * 2 * LINEAR_WEIGHTS,
                       linear_macs_per_token=2 * LINEAR_WEIGHTS, head_weight_bytes=4 * 1000 * 64)


def _batch(query_lens: list[int], seq_lens: list[int]) -> StepBatch:
    tokens = sum(query_lens)
    return StepBatch(input_ids=torch.zeros(tokens, dtype=torch.long), positions=torch.zeros(tokens, dtype=torch.long),
                     slot_mapping=torch.zeros(tokens, dtype=torch.long), query_lens=torch.tensor(query_lens),
                     seq_lens=torch.tensor(seq_lens), block_table=torch.zeros(len(query_lens), 1, dtype=torch.long),
                     num_decodes=sum(q == 1 for q in query_lens), logits_indices=torch.arange(len(query_lens)),
                     block_size=16)


def test_linears_are_2mnk_and_read_their_weights_once() -> None:
    costs = step_costs(_shapes(), _batch([10, 6], [10, 6]), sampled_rows=2)
    assert costs[cat.LINEARS].flops == 2 * 16 * 2 * LINEAR_WEIGHTS
    assert costs[cat.LINEARS].bytes > 4 * 2 * LINEAR_WEIGHTS
    assert costs[cat.LOGITS].flops == 2 * 2 * 64 * 1000
    assert costs[cat.SAMPLING] == Cost(0.0, 2 * 1000 * 4)


def test_attention_counts_the_causal_pairs_and_reads_each_key_once() -> None:
    prefill = step_costs(_shapes(), _batch([8], [8]), 1)[cat.ATTENTION]
    assert prefill.flops == 4 * 4 * 16 * (8 * 9 / 2) * 2  # heads * head_dim * pairs * layers
    decode = step_costs(_shapes(), _batch([1, 1], [100, 50]), 2)[cat.ATTENTION]
    assert decode.flops == 4 * 4 * 16 * 150 * 2
    assert decode.bytes == (2 * 150 * 32 * 4 + 2 * 2 * 64 * 4) * 2


def test_roofline_takes_the_slower_roof() -> None:
    roof = Roofline(copy_bytes_per_s=10e9, matmul_flops_per_s=100e9, matmul_dtype="float32")
    assert roof.seconds(Cost(flops=1e9, bytes=1e9)) == pytest.approx(0.1)
    assert roof.bound(Cost(flops=1e9, bytes=1e9)) == "memory"
    assert roof.bound(Cost(flops=1e12, bytes=1e9)) == "compute"


def test_model_shapes_match_the_loaded_weights(tmp_path) -> None:
    from llmserve import LLM
    from tests.tiny_models import save_tiny_model

    save_tiny_model("qwen2", tmp_path)  # qkv bias
    model = LLM(str(tmp_path), dtype="float32", num_threads=1).engine.runner.model
    shapes = ModelShapes.of(model, torch.float32, torch.float32)
    weights = [layer.get_submodule(path).weight for layer in model.layers
               for path in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")]
    assert shapes.linear_macs_per_token == sum(w.numel() for w in weights)
    assert shapes.linear_weight_bytes >= 4 * shapes.linear_macs_per_token  # + the biases
    assert shapes.head_weight_bytes == 4 * model.config.vocab_size * model.config.hidden_size
