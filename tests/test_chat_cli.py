"""`llmserve chat`: its sampling defaults, a cut-off reply left out of the history, and keystrokes
typed while a reply streams kept out of the reply."""

from __future__ import annotations

import json
import os
import pty
import select
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmserve import chat_cli
from llmserve.chat_cli import sampling_settings
from llmserve.cli import build_parser, main
from llmserve.model.tokenizer import Tokenizer
from llmserve.terminal import typing_hidden
from tests.timing import PATIENCE_S, wait_until
from tests.tiny_models import save_tiny_chat_model


def _settings(*argv: str) -> tuple[dict, str]:
    return sampling_settings(build_parser().parse_args(["chat", *argv]))


def test_chat_samples_with_the_models_generation_config(tmp_path: Path) -> None:
    config = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_new_tokens": 300,
              "eos_token_id": [2, 7]}
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    settings, source = _settings("--model", str(tmp_path))
    assert settings == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0, "repetition_penalty": 1.0,
                        "max_tokens": 300}
    assert source == "the model's generation_config.json"
    flags, _ = _settings("--model", str(tmp_path), "--temperature", "0", "--max-tokens", "40")
    assert (flags["temperature"], flags["max_tokens"], flags["top_p"]) == (0.0, 40, 0.95)  # flags win


@pytest.mark.parametrize("generation_config", [None, {"eos_token_id": [2, 7]}])
def test_without_sampling_settings_from_the_model_chat_is_mild_not_greedy(tmp_path: Path,
                                                                          generation_config: dict | None) -> None:
    if generation_config is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation_config))
    settings, source = _settings("--model", str(tmp_path))
    assert settings == {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                        "max_tokens": 512}
    assert source == "llmserve's defaults"
    assert _settings()[0] == settings  # the embedded GGUF model has no generation_config.json


def test_generate_stays_greedy_and_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["generate", "hi"])
    assert sampling_settings(args)[0] == {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                                          "repetition_penalty": 1.0, "max_tokens": 64}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chat", "--help"])
    assert "generation_config.json, else 0.7" in " ".join(capsys.readouterr().out.split())


def record_what_the_model_is_sent(monkeypatch: pytest.MonkeyPatch) -> list[list[dict]]:
    sent: list[list[dict]] = []
    render_chat = Tokenizer.render_chat

    def recording_render_chat(self: Tokenizer, messages: list[dict], *args, **kwargs) -> dict:
        sent.append([dict(m) for m in messages])
        return render_chat(self, messages, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "render_chat", recording_render_chat)
    return sent


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-chat")
    save_tiny_chat_model(path)
    return path


def test_a_reply_cut_off_at_the_token_limit_is_not_kept(chat_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    typed: Iterator[str] = iter(["Hello there", "And again"])

    def fake_input(prompt: str = "") -> str:
        print(prompt, end="")
        line = next(typed, None)
        if line is None:
            raise EOFError  # Ctrl-D
        return line

    sent = record_what_the_model_is_sent(monkeypatch)
    monkeypatch.setattr("builtins.input", fake_input)
    code = main(["chat", "--model", str(chat_model), "--system", "Be brief.", "--max-tokens", "3",
                 "--temperature", "0", "--max-model-len", "256", "--kv-cache-memory", "64MiB"])
    out = capsys.readouterr().out
    assert code == 0
    assert "sampling: temperature 0, top_p 0.9, up to 3 tokens (llmserve's defaults; flags override)" in out
    assert out.count("[cut off at 3 tokens; not kept in the history]") == 2
    system = {"role": "system", "content": "Be brief."}
    assert sent == [[system, {"role": "user", "content": "Hello there"}],
                    [system, {"role": "user", "content": "And again"}]]  # nothing of the first turn


def _read_until(fd: int, marker: bytes) -> bytes:
    seen = b""

    def more() -> bool:
        nonlocal seen
        if select.select([fd], [], [], 0)[0]:
            seen += os.read(fd, 1024)
        return marker in seen

    assert wait_until(more), seen
    return seen


def _pending(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_typing_while_a_reply_streams_is_not_echoed_and_is_discarded() -> None:
    master, slave = pty.openpty()
    try:
        with open(slave, closefd=False) as terminal:
            before = termios.tcgetattr(slave)
            os.write(master, b"echoed\n")  # the control: a terminal echoes what is typed
            assert b"echoed" in _read_until(master, b"echoed")
            termios.tcflush(slave, termios.TCIFLUSH)
            with typing_hidden(terminal):
                os.write(master, b"typed ahead\n")
                assert wait_until(lambda: _pending(slave))  # the terminal has taken in the typing
                os.write(slave, b"the reply\n")
                shown = _read_until(master, b"the reply")
            assert b"typed" not in shown
            assert not _pending(slave)  # discarded, not sent as the next message
            assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_the_terminal_is_restored_after_ctrl_c() -> None:
    master, slave = pty.openpty()
    try:
        with open(slave, closefd=False) as terminal:
            before = termios.tcgetattr(slave)
            with pytest.raises(KeyboardInterrupt), typing_hidden(terminal):
                assert not termios.tcgetattr(slave)[3] & termios.ECHO
                raise KeyboardInterrupt
            assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_chat_on_a_terminal_neither_shows_nor_sends_what_is_typed_during_a_reply(
        chat_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole command on a pseudo-terminal: the test types a message at the prompt, types again
    as the reply's first piece is written, then /exit at the next prompt; it reads what the
    terminal shows. No timing: each step waits for the one before it."""
    master, slave = pty.openpty()
    shown = bytearray()
    done = threading.Event()

    def user() -> None:  # reads the screen; answers each prompt
        for answer in (b"Hello\n", b"/exit\n"):
            prompts = shown.count(b"> ") + 1
            while shown.count(b"> ") < prompts and not done.is_set():
                if select.select([master], [], [], 0.05)[0]:
                    shown.extend(os.read(master, 1024))
            os.write(master, answer)
        while not done.is_set():
            if select.select([master], [], [], 0.05)[0]:
                shown.extend(os.read(master, 1024))

    typed_during_reply = threading.Event()

    def write_and_type(chunk: str) -> None:
        if not typed_during_reply.is_set():
            typed_during_reply.set()
            os.write(master, b"sneaky\n")
            assert wait_until(lambda: _pending(slave))  # the terminal has taken in the typing
        write_flushed(chunk)

    write_flushed = chat_cli.write_flushed
    monkeypatch.setattr(chat_cli, "write_flushed", write_and_type)
    sent = record_what_the_model_is_sent(monkeypatch)
    reader = threading.Thread(target=user, daemon=True)
    try:
        with open(slave, closefd=False) as terminal_in, open(slave, "w", closefd=False) as terminal_out:
            monkeypatch.setattr(sys, "stdin", terminal_in)
            monkeypatch.setattr(sys, "stdout", terminal_out)
            reader.start()
            code = main(["chat", "--model", str(chat_model), "--max-tokens", "3", "--temperature", "0",
                         "--max-model-len", "256", "--kv-cache-memory", "64MiB"])
            terminal_out.flush()
    finally:
        done.set()
        reader.join(PATIENCE_S)
        os.close(master)
        os.close(slave)
    assert code == 0 and typed_during_reply.is_set()
    screen = bytes(shown).decode(errors="replace")
    assert "> Hello" in screen and "> /exit" in screen  # what is typed at a prompt shows, as it should
    assert "sneaky" not in screen
    assert sent == [[{"role": "user", "content": "Hello"}]]  # and it never reached the model
