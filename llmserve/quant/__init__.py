"""Weight quantization: int8 and int4 weight-only, w8a8 (dynamic int8 activations), fp8 on CUDA."""
