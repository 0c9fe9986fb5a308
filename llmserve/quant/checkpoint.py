"""Quantized checkpoints: `llmserve quantize` writes one, the loader reads it back without requantizing.

The folder is an HF-style one (config.json, model.safetensors, tokenizer files), its config
carrying a `quantization_config` with `"quant_method": "llmserve"` and how each module is stored.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmserve.quant.apply import portable_state
from llmserve.quant.config import QuantConfig

if TYPE_CHECKING:
    from llmserve.model.loader import LoadedModel

QUANT_METHOD = "llmserve"


@dataclass
class SavedQuantization:
    config: QuantConfig
    specs: dict[str, dict]


def saved_quantization(hf_config: dict, requested: QuantConfig) -> SavedQuantization | None:
    """How a checkpoint folder is quantized (None: it is not), checked against what was asked for."""
    entry = hf_config.get("quantization_config")
    if not entry:
        return None
    if entry.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"this checkpoint is quantized with {entry.get('quant_method')!r}; llmserve loads "
                         "full-precision checkpoints, GGUF files, and folders written by `llmserve quantize`")
    if "method" not in entry or "modules" not in entry:
        raise ValueError("this checkpoint's quantization_config lacks 'method' or 'modules'; write it again "
                         "with `llmserve quantize`")
    saved = QuantConfig(method=entry["method"], group_size=entry.get("group_size"), skip=tuple(entry.get("skip", ())))
    if requested.enabled and _conflicts(requested, saved):
        raise ValueError(f"this checkpoint is already quantized ({saved.describe()}); drop --quantization "
                         f"({requested.describe()}) or quantize the original again")
    return SavedQuantization(saved, dict(entry["modules"]))


def _conflicts(requested: QuantConfig, saved: QuantConfig) -> bool:
    """Whether a request asks for something the saved weights are not (what it leaves unset is no conflict)."""
    return (requested.method != saved.method
            or (requested.group_size is not None and requested.group_size != saved.group_size)
            or (bool(requested.skip) and set(requested.skip) != set(saved.skip)))


def save_quantized(loaded: LoadedModel, out: Path) -> Path:
    """Write the loaded (quantized) model as a folder `llmserve serve --model` starts from directly."""
    from safetensors.torch import save_file

    if not loaded.quant.enabled:
        raise ValueError("the model is not quantized; pass a quantization method")
    if out.resolve() == loaded.path.resolve() or (out.exists() and any(out.iterdir())):
        raise ValueError(f"{out} is not an empty folder; `llmserve quantize` writes a new one")
    out.mkdir(parents=True, exist_ok=True)
    save_file(portable_state(loaded.model), str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {k: v for k, v in loaded.hf_config.items() if k != "quantization_config"}
    # A GGUF file may name its EOS only in the tokenizer metadata; the folder's config must carry it.
    config["eos_token_id"] = list(loaded.config.eos_token_ids) or config.get("eos_token_id")
    quant = loaded.quant
    config["quantization_config"] = {"quant_method": QUANT_METHOD, "method": quant.method,
                                     "group_size": quant.group_size, "skip": list(quant.skip),
                                     "modules": loaded.quant_specs}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # safetensors writes a private temporary file and renames it, so the weights would stay 0600:
    # give them the mode the umask gave config.json, as the tokenizer files get too.
    shutil.copymode(out / "config.json", out / "model.safetensors")
    if loaded.tokenizer is not None:
        loaded.tokenizer.save(out)
    return out
