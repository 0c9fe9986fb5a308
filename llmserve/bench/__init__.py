"""Load generation and reports for OpenAI-compatible servers, over HTTP only.

Nothing here imports torch or the engine, so the same code measures our server, vLLM or llama.cpp.
Modules: workload and datasets (what is sent, when), client (streaming HTTP), result and stats
(figures), slo (goodput), runner (a run or sweep, its JSON), report and plots, cli.
"""
