"""The command line's conventions (semlayout.commands.conventions): every option has help
and reads an environment variable, a shared setting has one name and one variable in every
command, flags look like flags, `--version`, shell completion, and the dry runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from semlayout.commands import conventions


def _command():  # type: ignore[no-untyped-def]
    from semlayout.cli import build_command

    return build_command()


def _options():  # type: ignore[no-untyped-def]
    for path, cmd in conventions.walk(_command()):
        for p in cmd.params:
            if p.param_type_name == "option" and p.name not in conventions.NO_VARIABLE:
                yield path, p


def run(*args: str, env: dict | None = None, cwd: Path | None = None):  # type: ignore[no-untyped-def]
    full = {k: v for k, v in os.environ.items() if not k.startswith("SEMLAYOUT_")}
    full.update({"COLUMNS": "240", **(env or {})})
    return subprocess.run([sys.executable, "-m", "semlayout.cli", *args], capture_output=True,
                          text=True, timeout=300, env=full, cwd=cwd)  # fmt: skip


def test_every_option_has_help_and_reads_a_semlayout_variable() -> None:
    seen = 0
    for path, p in _options():
        where = f"{' '.join(path)} {conventions.long_name(p)}"
        assert p.help and p.help.strip(), f"{where}: no help text"
        assert p.envvar, f"{where}: reads no environment variable"
        names = [p.envvar] if isinstance(p.envvar, str) else list(p.envvar)
        assert names[0].startswith("SEMLAYOUT_"), f"{where}: {names}"
        seen += 1
    assert seen > 100


def test_a_shared_setting_has_one_name_and_one_variable_everywhere() -> None:
    by_name: dict[str, set[tuple[str, ...]]] = {}
    for _, p in _options():
        name = conventions.long_name(p)
        if name in conventions.SHARED:
            by_name.setdefault(name, set()).add(tuple(p.envvar))
    for name, variables in by_name.items():
        assert variables == {conventions.SHARED[name]}, (name, variables)
    assert {"--db", "--tracking-uri", "--model"} <= set(by_name)
    # the spellings that were retired for the shared names
    all_names = {n for _, p in _options() for n in p.opts}
    assert not {"--mlflow-uri", "--monitor-db"} & all_names
    pipeline_hosts = {
        n for path, p in _options() if path[1:2] == ("pipeline",) for n in p.opts if "host" in n
    }
    assert pipeline_hosts == {"--kfp-host"}


def test_flags_show_no_value_and_help_lists_the_variables() -> None:
    out = run("predict", "--help")
    assert out.returncode == 0
    assert "<bool>" not in out.stdout and "SEMLAYOUT_PREDICT_BATCH_SIZE" in out.stdout
    assert "SEMLAYOUT_MODEL" in out.stdout and "MLFLOW_TRACKING_URI" in out.stdout


def test_options_are_read_from_their_variables(tmp_path: Path) -> None:
    from semlayout.monitoring.store import MonitorStore

    db = tmp_path / "monitor.db"
    MonitorStore(db).close()
    # `monitor summary` needs --db: the variable gives it
    out = run("monitor", "summary", "--json", env={"SEMLAYOUT_MONITOR_DB": str(db)})
    assert out.returncode == 0, out.stderr
    assert str(db) in out.stdout
    # a command-specific option: SEMLAYOUT_<COMMAND>_<OPTION>
    out = run("monitor", "summary", env={"SEMLAYOUT_MONITOR_DB": str(db),
                                         "SEMLAYOUT_MONITOR_SUMMARY_JSON": "1"})  # fmt: skip
    assert out.returncode == 0 and out.stdout.lstrip().startswith("{")
    # the command line wins over the variable
    out = run("monitor", "summary", "--db", str(tmp_path / "nope.db"),
              env={"SEMLAYOUT_MONITOR_DB": str(db)})  # fmt: skip
    assert out.returncode != 0 and "nope.db" in out.stderr


def test_version_and_shell_completion() -> None:
    from semlayout import __version__

    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"semlayout {__version__}"
    script = run("--show-completion", "bash")
    assert script.returncode == 0 and "_SEMLAYOUT_COMPLETE" in script.stdout
    env = {"_SEMLAYOUT_COMPLETE": "complete_bash", "COMP_WORDS": "semlayout registry com",
           "COMP_CWORD": "2"}  # fmt: skip
    words = run(env=env).stdout.split()
    assert words == ["compare"]
    env = {"_SEMLAYOUT_COMPLETE": "complete_bash", "COMP_WORDS": "semlayout monitor summary --",
           "COMP_CWORD": "3"}  # fmt: skip
    assert {"--db", "--window", "--json"} <= set(run(env=env).stdout.split())


def test_pipeline_run_help_is_the_same_style_with_every_option_documented() -> None:
    out = run("pipeline", "run", "--help")
    assert out.returncode == 0
    assert "╭─ Options" in out.stdout and "usage: python" not in out.stdout
    for option in ("--data", "--n-synth", "--tracking-uri", "--floor-sem2layout", "--verbose"):
        assert option in out.stdout


def test_compile_keeps_integer_defaults_and_says_what_it_applied(tmp_path: Path) -> None:
    import yaml

    out = run("pipeline", "compile", "--out", str(tmp_path), "--pipeline", "training")
    assert out.returncode == 0, out.stderr
    assert "nvidia-l4" in out.stdout and "cluster settings" in out.stdout
    spec = next(yaml.safe_load_all((tmp_path / "training.yaml").read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["n_synth"]["defaultValue"] == 200 and isinstance(
        params["n_synth"]["defaultValue"], int
    )
    assert isinstance(params["tolerance"]["defaultValue"], float)
    helptext = run("pipeline", "compile", "--help").stdout
    assert "nvidia-l4" in helptext and "SEMLAYOUT_GPU_NODE_SELECTOR" in helptext
    out = run("pipeline", "compile", "--out", str(tmp_path / "none"), "--pipeline", "training",
              "--node-selector", "")  # fmt: skip
    assert "no node selector" in out.stdout
    assert "nodeSelector" not in (tmp_path / "none" / "training.yaml").read_text()


def test_submit_dry_run_checks_and_sends_nothing() -> None:
    # a host nobody listens on: a dry run must not try it
    out = run("pipeline", "submit", "--kfp-host", "http://127.0.0.1:9", "--param",
              "data_uri=s3://b/p", "--dry-run", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    import json

    plan = json.loads(out.stdout)
    assert plan["dry_run"] is True and plan["arguments"] == {"data_uri": "s3://b/p"}
    assert Path(plan["package"]).is_file()
    bad = run("pipeline", "submit", "--kfp-host", "http://127.0.0.1:9", "--param", "nope=1",
              "--dry-run")  # fmt: skip
    assert bad.returncode == 2 and "no parameter(s) ['nope']" in bad.stderr


@pytest.mark.parametrize("shell_words", [["registry"], ["pipeline"], ["monitor"]])
def test_group_help_has_no_bool_values(shell_words: list[str]) -> None:
    out = run(*shell_words, "--help")
    assert out.returncode == 0 and "<bool>" not in out.stdout


def test_serving_the_champion_before_any_approval_names_the_next_command(tmp_path: Path) -> None:
    from helpers_serving import make_checkpoint

    from semlayout.gate import GateConfig, judge
    from semlayout.registry import Registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri, create=True)
    metrics = {"sem2layout": {"ssim": 0.9}, "layout2sem": {"ssim": 0.4}}
    run_id = registry.log_run("exp", make_checkpoint(tmp_path / "ckpt"), metrics)
    gate = judge(metrics, None, GateConfig(floors={"sem2layout": 0.5, "layout2sem": 0.2}))
    assert registry.register("semlayout", run_id, gate) == 1
    env = {"MLFLOW_TRACKING_URI": uri, "SEMLAYOUT_CACHE_DIR": str(tmp_path / "c")}
    out = run("serve", "--model", "models:/semlayout@champion", "--db", str(tmp_path / "m.db"),
              env=env)  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no champion yet (the challenger is v1)" in lines[0]
    assert "semlayout registry approve semlayout 1 --by YOU --reason" in lines[0]
