"""The parts a step's time is split into, in the order the table prints them."""

from __future__ import annotations

ATTENTION = "attention"
ROPE_KV = "rope + KV store"
LINEARS = "linears"
NORMS = "norms"
ACTIVATIONS = "activations"
EMBEDDING = "embedding"
LOGITS = "logits"
SAMPLING = "sampling"
PREPARATION = "step preparation"
OVERHEAD = "host/framework overhead"

# What the profiler wraps; the overhead is what is left of the step's wall time.
MEASURED = (ATTENTION, ROPE_KV, LINEARS, NORMS, ACTIVATIONS, EMBEDDING, LOGITS, SAMPLING, PREPARATION)
ALL = (*MEASURED, OVERHEAD)

# The LayerOps method each category times.
LAYER_OPS = {"attention": ATTENTION, "rotate_and_store": ROPE_KV, "rms_norm": NORMS,
             "silu_and_mul": ACTIVATIONS, "linear": LINEARS, "logits": LOGITS}
