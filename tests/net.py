"""Network helpers the tests share."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A 127.0.0.1 port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
