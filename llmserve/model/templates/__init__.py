"""Chat templates shipped with llmserve, for models whose own template lacks something (tools)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGED = ("smollm2_tools",)


def packaged_template_path(name: str) -> Path:
    return Path(str(resources.files(__name__).joinpath(f"{name}.jinja")))


def read_chat_template(source: str) -> str:
    """`--chat-template`'s value: a Jinja file, or the name of a template shipped here."""
    path = Path(source).expanduser()
    if not path.is_file() and source in PACKAGED:
        path = packaged_template_path(source)
    if not path.is_file():
        shipped = ", ".join(PACKAGED)
        raise FileNotFoundError(f"chat template {source!r} is neither a file nor a shipped template ({shipped})")
    return path.read_text(encoding="utf-8")
