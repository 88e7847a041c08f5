"""The command surface: help is fast and complete, user mistakes are one line and exit 2."""

import subprocess
import sys


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "semlayout.cli", *args], capture_output=True, text=True, timeout=120
    )


# every command the README promises, by area; `pipeline` comes from the KFP layer's plugin
COMMANDS = {
    "data": ("synth", "gds-clips"),
    "align": ("align",),
    "shard": ("shard",),
    "train": ("train",),
    "model": ("predict", "evaluate"),
    "registry": ("registry",),
    "intake": ("intake",),
    "serve": ("serve",),
    "monitor": ("monitor",),
    "loop": ("loop",),
    "pipeline": ("pipeline",),
    "version": ("version",),
}


def _listed_commands(help_text: str) -> set[str]:
    # rich's help box: "│ synth      Synthesise SEM/layout pairs ..."
    names = set()
    for line in help_text.splitlines():
        parts = line.strip("│ ").split()
        if parts and line.lstrip().startswith("│") and not line.startswith("│  "):
            names.add(parts[0])
    return names


def test_help_lists_every_command_area():
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    listed = _listed_commands(out.stdout)
    for area, commands in COMMANDS.items():
        for cmd in commands:
            assert cmd in listed, f"area '{area}': command '{cmd}' missing from --help"


def test_every_command_module_is_registered():
    from pathlib import Path

    from semlayout import cli, commands

    on_disk = {p.stem for p in Path(commands.__file__).parent.glob("cmd_*.py")}
    assert {m.__name__.rsplit(".", 1)[1] for m in cli.AREAS} == on_disk


def test_a_command_area_that_cannot_be_imported_fails_loudly():
    # an area whose import breaks must not silently vanish from the command
    code = (
        "import sys; sys.modules['semlayout.commands.cmd_intake'] = None\n"
        "from semlayout.cli import main\n"
        "sys.exit(main(['--help']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "cmd_intake" in out.stderr


def test_a_plugin_that_cannot_be_imported_fails_loudly():
    code = (
        "import sys; sys.modules['semlayout_pipelines.cmd_pipeline'] = None\n"
        "from semlayout.cli import main\n"
        "sys.exit(main(['--help']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "semlayout_pipelines.cmd_pipeline" in out.stderr


def test_unknown_command_is_a_usage_error():
    out = _run("no-such-command")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_version():
    from importlib.metadata import version

    import semlayout

    out = _run("version")
    assert out.returncode == 0
    assert out.stdout.strip() == semlayout.__version__ == version("semlayout")


def test_a_sigterm_in_one_call_does_not_leak_into_the_next_in_process_call():
    from semlayout import cli

    cli._terminated = True  # as the SIGTERM handler leaves it
    assert cli.main(["version"]) == 0
