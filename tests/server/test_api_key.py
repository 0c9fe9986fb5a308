"""`llmserve serve` takes its API key from --api-key, --api-key-file or $LLMSERVE_API_KEY."""

from __future__ import annotations

import pytest

from llmserve.cli import build_parser, cmd_serve, main
from llmserve.server.api_key import API_KEY_ENV, resolve_api_key


def _served_config(monkeypatch, argv: list[str]):
    """The ServerConfig `llmserve serve ARGV` would run, without running it."""
    seen = []
    monkeypatch.setattr("llmserve.server.launcher.run_server", lambda config, log_level: seen.append(config) or 0)
    assert cmd_serve(build_parser().parse_args(["serve", *argv])) == 0
    return seen[0]


def test_the_key_comes_from_the_flag_the_file_or_the_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert resolve_api_key("from-flag", None, {}) == "from-flag"
    assert resolve_api_key(None, str(key_file), {}) == "from-file"  # the trailing newline is not part of it
    assert resolve_api_key(None, None, {API_KEY_ENV: "from-env"}) == "from-env"
    assert resolve_api_key(None, None, {}) is None


def test_either_flag_overrides_the_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\r\n")
    env = {API_KEY_ENV: "from-env"}
    assert resolve_api_key("from-flag", None, env) == "from-flag"
    assert resolve_api_key(None, str(key_file), env) == "from-file"


def test_the_flag_and_the_file_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "--api-key", "a", "--api-key-file", str(tmp_path / "key")])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "\n", "  \n"])
def test_an_empty_key_file_is_refused_clearly(tmp_path, capsys, text):
    key_file = tmp_path / "key"
    key_file.write_text(text)
    assert main(["serve", "--api-key-file", str(key_file)]) == 2
    assert "gives an empty API key" in capsys.readouterr().err


def test_an_empty_environment_variable_is_refused_not_taken_as_no_auth(monkeypatch, capsys):
    monkeypatch.setenv(API_KEY_ENV, "")
    assert main(["serve"]) == 2
    assert f"${API_KEY_ENV} gives an empty API key" in capsys.readouterr().err


def test_a_missing_or_multi_line_key_file_is_refused(tmp_path, capsys):
    assert main(["serve", "--api-key-file", str(tmp_path / "absent")]) == 2
    assert "no such file" in capsys.readouterr().err
    key_file = tmp_path / "key"
    key_file.write_text("one\ntwo\n")
    assert main(["serve", "--api-key-file", str(key_file)]) == 2
    assert "one line" in capsys.readouterr().err


def test_serve_hands_the_resolved_key_to_the_server(monkeypatch, tmp_path):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    key_file = tmp_path / "key"
    key_file.write_text("secret-from-file\n")
    assert _served_config(monkeypatch, ["--api-key-file", str(key_file)]).api_key == "secret-from-file"
    assert _served_config(monkeypatch, []).api_key is None
    monkeypatch.setenv(API_KEY_ENV, "secret-from-env")
    assert _served_config(monkeypatch, []).api_key == "secret-from-env"
    assert _served_config(monkeypatch, ["--api-key", "flag"]).api_key == "flag"


def test_help_explains_where_the_key_comes_from(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--api-key-file PATH" in text and f"else from ${API_KEY_ENV}" in text and "(not both)" in text


def test_serve_takes_the_request_limits(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    config = _served_config(monkeypatch, ["--max-request-body", "8MiB", "--request-read-timeout", "2.5"])
    assert (config.max_request_body, config.request_read_timeout) == (8 << 20, 2.5)
    assert _served_config(monkeypatch, []).max_request_body == 4 << 20
