"""Terminal handling for the interactive commands: keystrokes typed while a reply streams."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


@contextmanager
def typing_hidden(stream: TextIO) -> Iterator[None]:
    """While the block runs, what is typed on the terminal `stream` is not echoed (it would land in
    the middle of the streamed reply), and on leaving, whatever was typed is discarded: it was typed
    before the reply was read to the end, and kept it would be sent unseen, or prefix the next message
    invisibly. The terminal's settings come back however the block ends, Ctrl-C included (ISIG is
    left on, so Ctrl-C still interrupts). Not a terminal (a pipe, a file, Windows): nothing to do."""
    try:
        import termios
    except ImportError:  # Windows: no termios, and its console does not echo into output this way
        yield
        return
    if not stream.isatty():
        yield
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    quiet = termios.tcgetattr(fd)
    quiet[3] &= ~termios.ECHO  # the local modes
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcflush(fd, termios.TCIFLUSH)
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def write_flushed(chunk: str) -> None:
    """Stdout as the reply streams: each piece shows at once, not at the end of a line."""
    sys.stdout.write(chunk)
    sys.stdout.flush()

