"""Attention backends: one per device, chosen once when the engine is built."""
