"""Where `llmserve serve` finds its API key: a flag, a file, or the environment.

A key on the command line is visible to every user of the machine (`ps`), so a file (mode 600,
or a mounted secret) or the LLMSERVE_API_KEY variable are the ways to keep it private.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

API_KEY_ENV = "LLMSERVE_API_KEY"


def resolve_api_key(flag: str | None, file: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """--api-key, else --api-key-file, else $LLMSERVE_API_KEY, else None (no key required).

    The two flags together are refused by the parser: an operator who names both means one of
    them, and picking one silently would leave the other's key unexpectedly dead. Either flag
    overrides the variable, as a command line overrides the environment. An empty key from any
    source is an error rather than "no auth": it is almost always a mistake that would otherwise
    leave the server open.
    """
    if flag is not None:
        return _checked(flag, "--api-key")
    if file is not None:
        return _checked(_read(file).rstrip("\r\n"), f"--api-key-file {file}")
    if API_KEY_ENV in environ:
        return _checked(environ[API_KEY_ENV], f"${API_KEY_ENV}")
    return None


def _read(file: str) -> str:
    try:
        return Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"--api-key-file {file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--api-key-file {file}: cannot read it ({exc})") from None


def _checked(key: str, source: str) -> str:
    if not key.strip():
        raise ValueError(f"{source} gives an empty API key; give a key, or none of --api-key, --api-key-file "
                         f"and ${API_KEY_ENV} to serve without one")
    if key != key.strip() or any(c in key for c in "\r\n"):
        # A bearer token arrives stripped and on one line, so such a key could never match.
        raise ValueError(f"{source}: the API key must be one line without leading or trailing spaces")
    return key
