"""The command line's conventions, applied to every command (built-in or plugin) in one place.

- **One name per setting.** A setting that several commands take has one option name and one
  environment variable everywhere (`SHARED`); `tests/test_cli.py` fails when a command spells
  one differently.
- **Every option reads a variable.** The shared ones read the variable in `SHARED`; every
  other option reads `SEMLAYOUT_<COMMAND>_<OPTION>` (click's `auto_envvar_prefix`, e.g.
  `SEMLAYOUT_MONITOR_SUMMARY_WINDOW`), and `--help` shows which.
- **Flags look like flags**: `--binarize`, not `--binarize <bool>`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

ENV_PREFIX = "SEMLAYOUT"
_HAND_ENV = re.compile(r"\s*[(;,]?\s*\(?env(?:ironment)?(?: variable)? \$?SEMLAYOUT_[A-Z_]+\)?")

# option -> the environment variable(s) it reads, the same in every command that takes it
SHARED: dict[str, tuple[str, ...]] = {
    "--db": ("SEMLAYOUT_MONITOR_DB",),
    "--tracking-uri": ("SEMLAYOUT_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    "--model": ("SEMLAYOUT_MODEL",),
    "--model-name": ("SEMLAYOUT_MODEL_NAME",),
    "--backend": ("SEMLAYOUT_BACKEND",),
    "--reference": ("SEMLAYOUT_REFERENCE",),
    "--feedback-dir": ("SEMLAYOUT_FEEDBACK_DIR",),
    "--feedback-uri": ("SEMLAYOUT_FEEDBACK_URI",),
    "--intake-uri": ("SEMLAYOUT_INTAKE_URI",),
    "--kfp-host": ("SEMLAYOUT_KFP_HOST",),
    "--image": ("SEMLAYOUT_IMAGE",),
    "--experiment": ("SEMLAYOUT_EXPERIMENT",),
    "--by": ("SEMLAYOUT_USER",),
    "--layer-polarity": ("SEMLAYOUT_LAYER_POLARITY",),
    "--max-field-side": ("SEMLAYOUT_MAX_FIELD_SIDE",),
    "--layer": ("SEMLAYOUT_LAYER",),
}
# an option shared by the commands of one group only: (group, option) -> variable
GROUP_SHARED: dict[tuple[str, str], tuple[str, ...]] = {
    ("loop", "--config"): ("SEMLAYOUT_LOOP_CONFIG",),
}


# options that are about the command line itself, not a setting
NO_VARIABLE = ("help", "install_completion", "show_completion", "version")


def walk(
    command: Any, path: tuple[str, ...] = ("semlayout",), groups: bool = False
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(command path, click command) for every leaf command under `command` (and every group
    too, `command` first, with `groups=True`)."""
    subcommands = getattr(command, "commands", None)
    if subcommands is None or groups:
        yield path, command
    for name, sub in (subcommands or {}).items():
        yield from walk(sub, (*path, name), groups)


def long_name(param: Any) -> str | None:
    return next((o for o in param.opts if o.startswith("--")), None)


def envvar_for(path: tuple[str, ...], param: Any) -> tuple[str, ...]:
    """The variable(s) an option reads: its shared name, or SEMLAYOUT_<COMMAND>_<OPTION>."""
    if param.envvar:
        return (param.envvar,) if isinstance(param.envvar, str) else tuple(param.envvar)
    name = long_name(param) or ""
    if name in SHARED:
        return SHARED[name]
    if len(path) > 1 and (path[1], name) in GROUP_SHARED:
        return GROUP_SHARED[(path[1], name)]
    parts = [*path[1:], name.lstrip("-") or param.name]
    return ("_".join([ENV_PREFIX, *parts]).upper().replace("-", "_"),)


def apply(command: Any) -> Any:
    """Apply the conventions to every option of every command under `command` (in place)."""
    for path, cmd in walk(command, groups=True):
        _flag_help(cmd)
        for param in cmd.params:
            if param.param_type_name != "option":
                continue
            if getattr(param, "is_flag", False) and not getattr(param, "count", False):
                param.metavar = ""
            if param.name in NO_VARIABLE or path == ("semlayout",):
                continue
            param.envvar = list(envvar_for(path, param))
            param.show_envvar = True
            if param.help:  # "(env X)" written by hand repeats what --help now shows
                param.help = _HAND_ENV.sub("", param.help)
    return command


def _flag_help(cmd: Any) -> None:
    """`--help` is made per invocation by click: show it as a flag too."""
    make = cmd.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option

    cmd.get_help_option = get_help_option
