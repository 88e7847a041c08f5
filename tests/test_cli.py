"""The command surface: help is fast and complete, user mistakes are one line and exit 2."""

import subprocess
import sys


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "semlayout.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_commands():
    out = _run("--help")
    assert out.returncode == 0
    for cmd in ("version",):
        assert cmd in out.stdout


def test_unknown_command_is_a_usage_error():
    out = _run("no-such-command")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_version():
    out = _run("version")
    assert out.returncode == 0 and out.stdout.strip()


def test_a_sigterm_in_one_call_does_not_leak_into_the_next_in_process_call():
    from semlayout import cli

    cli._terminated = True  # as the SIGTERM handler leaves it
    assert cli.main(["version"]) == 0
