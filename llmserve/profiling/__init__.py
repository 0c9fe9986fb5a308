"""`llmserve profile`: where an engine step's time and memory go, for one model on one machine."""
