"""The `semlayout` command: one entry point that composes each area's commands.

Each `semlayout.commands.*` module owns its commands and imports heavy
libraries (torch, mlflow, kfp) inside the command bodies, so `semlayout --help`
stays fast. A `SemlayoutError` (a user mistake) prints one line and exits 2; so does a
usage error (an unknown command or option, a missing argument, a value of the wrong type),
with a pointer to `--help` instead of the usage box.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import typer

from semlayout.commands import (
    cmd_align,
    cmd_data,
    cmd_intake,
    cmd_loop,
    cmd_model,
    cmd_monitor,
    cmd_registry,
    cmd_review,
    cmd_serve,
    cmd_shard,
    cmd_train,
    conventions,
)
from semlayout.errors import SemlayoutError

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on the real click
    from click.exceptions import ClickException, NoArgsIsHelpError  # type: ignore[assignment]

app = typer.Typer(
    name="semlayout",
    help="Bidirectional SEM <-> layout translation: data, training, registry, serving, monitoring.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


# the library's own command areas; each module defines `register(app)` and imports heavy
# libraries (torch, mlflow, cv2) inside its command bodies
AREAS = (
    cmd_data,
    cmd_align,
    cmd_shard,
    cmd_train,
    cmd_model,
    cmd_registry,
    cmd_intake,
    cmd_serve,
    cmd_monitor,
    cmd_review,
    cmd_loop,
)
# commands that live above the library (the KFP pipelines) register themselves through this
# entry-point group, so nothing in `semlayout` imports them (docs/architecture.md)
PLUGIN_GROUP = "semlayout.commands"


def _register() -> None:
    """Every area, built-in and plugin: an area that fails to import fails the command loudly."""
    from importlib.metadata import entry_points

    for area in AREAS:
        area.register(app)
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        ep.load()(app)


def _print_version(value: bool) -> None:
    if value:
        from semlayout import __version__

        print(f"semlayout {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="print the version and exit",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """Bidirectional SEM <-> layout translation: data, training, registry, serving, monitoring.

    Every option also reads an environment variable (shown in each command's --help);
    shell completion: `semlayout --install-completion` or `--show-completion bash`.
    """


@app.command()
def version() -> None:
    """Print the semlayout version."""
    from semlayout import __version__

    print(__version__)


_register()


def build_command() -> Any:
    """The click command tree with the command line's conventions applied
    (`semlayout.commands.conventions`: one name and variable per setting, flags as flags)."""
    return conventions.apply(typer.main.get_command(app))


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, kill, Kubernetes) unwinds like Ctrl-C, so atomic writes clean up."""


_terminated = False  # click may re-wrap the exception; this remembers what it was


def _on_sigterm(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    # a second SIGTERM kills at once: a process stuck in native code (a collective, a long
    # kernel) never runs this handler's unwinding
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


def _os_error_message(err: OSError) -> str:
    what = (err.strerror or err.__class__.__name__).lower()
    if err.filename is not None and err.filename2 is not None:
        return f"cannot move {err.filename} to {err.filename2}: {what}"
    if err.filename is not None:
        return f"cannot use {err.filename}: {what}"
    return str(err)


def _usage_message(err: ClickException) -> str:
    """A click usage error as one line: `error: semlayout synth: Invalid value for '--n': ...`."""
    message = " ".join(err.format_message().split())
    ctx = getattr(err, "ctx", None)
    if ctx is None:
        return f"error: {message}"
    return f"error: {ctx.command_path}: {message} (see '{ctx.command_path} --help')"


_USER_PATH_ERRORS = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)


def main(argv: list[str] | None = None) -> int:
    global _terminated
    _terminated = False
    installed = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if installed else None
    try:
        # not standalone: usage errors come here as exceptions (one line below, not the box);
        # `typer.Exit(code)` and --help come back as the return value
        rv = build_command().main(args=argv, prog_name="semlayout", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        # typer turns KeyboardInterrupt (Ctrl-C, and SIGTERM's Terminated) into exit code 130
        # after the unwinding that cleans up partial outputs
        if _terminated:
            print("error: terminated", file=sys.stderr)
            return 143
        if code == 130:
            print("error: interrupted", file=sys.stderr)
        return code
    except NoArgsIsHelpError as err:  # bare `semlayout` / `semlayout registry`: the help text
        err.show()
        return err.exit_code
    except ClickException as err:
        print(_usage_message(err), file=sys.stderr)
        return err.exit_code
    except typer.Abort:  # end of input at a prompt (interrupts come back as code 130 above)
        print("error: aborted", file=sys.stderr)
        return 1
    except SemlayoutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: {'terminated' if _terminated else 'interrupted'}", file=sys.stderr)
        return 143 if _terminated else 130
    except (
        _USER_PATH_ERRORS
    ) as err:  # the environment, not a bug: unwritable, missing or wrong-kind paths
        print(f"error: {_os_error_message(err)}", file=sys.stderr)
        return 1
    except SystemExit as exc:
        if _terminated:
            print("error: terminated", file=sys.stderr)
            return 143
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 1
    finally:
        if installed:  # None: the previous handler was set from C; the default is the closest
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
