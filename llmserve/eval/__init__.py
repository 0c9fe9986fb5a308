"""`llmserve eval`: accuracy, memory and speed of each precision against the full-precision model."""
