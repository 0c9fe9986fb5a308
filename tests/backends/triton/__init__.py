"""Tests of the Triton kernels (under TRITON_INTERPRET=1 on CPU)."""
