"""`semlayout loop check|run` — the continuous-learning loop from the command line.

`check` only reports; `run` acts (fine-tune pipeline under kfp.local, or submitted to
a KFP host with `--kfp-host`) through the launcher a package above the library registers
(entry point group `semlayout.launchers`), so the library stays free of kfp.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

loop_app = typer.Typer(
    help="Continuous learning: triggers -> fine-tune -> gated registration.", no_args_is_help=True
)

_CONFIG_HELP = "loop config YAML (policy, stores, registry); see configs/loop.yaml"
_DB_HELP = (
    "the server's monitoring store: a SQLite path or a postgresql:// URL (overrides the "
    "config's monitor_db)"
)
_FEEDBACK_HELP = "the server's --feedback-uri: a folder or s3://BUCKET/PREFIX"
_INTAKE_HELP = "intake batches: s3://BUCKET/PREFIX or a folder (overrides the config)"
_TRACKING_HELP = "MLflow tracking URI (overrides the config)"
_MODEL_NAME_HELP = "registered model the loop fine-tunes (overrides the config)"


def _options(
    monitor_db: str | None,
    feedback_uri: str | None,
    intake_uri: str | None,
    tracking_uri: str | None,
    model_name: str | None,
    sets: list[str],
) -> dict[str, object]:
    from semlayout.keyvalue import parse_assignments

    overrides = parse_assignments(sets, "--set", "policy.min_new_pairs=20")
    for key, value in (
        ("monitor_db", monitor_db),
        ("feedback_uri", feedback_uri),
        ("intake_uri", intake_uri),
        ("tracking_uri", tracking_uri),
        ("model_name", model_name),
    ):
        if value is not None:
            overrides[key] = value
    return overrides


@loop_app.command("check")
def check_cmd(
    config: Path = typer.Option(None, "--config", help=_CONFIG_HELP),
    monitor_db: str = typer.Option(None, "--db", envvar="SEMLAYOUT_MONITOR_DB", help=_DB_HELP),
    feedback_uri: str = typer.Option(None, "--feedback-uri", "--feedback-dir", help=_FEEDBACK_HELP),
    intake_uri: str = typer.Option(None, "--intake-uri", help=_INTAKE_HELP),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help=_TRACKING_HELP),
    model_name: str = typer.Option(None, "--model-name", help=_MODEL_NAME_HELP),
    set_: list[str] = typer.Option([], "--set", help="override KEY=VALUE (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Report the trigger decision and every reason with its numbers (acts on nothing)."""
    from semlayout.continual import check, load_loop_config

    cfg = load_loop_config(
        config, _options(monitor_db, feedback_uri, intake_uri, tracking_uri, model_name, set_)
    )
    decision, obs = check(cfg)
    if as_json:
        print(
            json.dumps(
                {
                    **decision.to_dict(),
                    "observations": {
                        "new_pairs_feedback": obs.new_pairs_feedback,
                        "new_pairs_intake": obs.new_pairs_intake,
                        "drift_rate": obs.drift_rate,
                        "drift_samples": obs.drift_samples,
                        "rolling_ssim": obs.rolling_ssim,
                        "baseline_ssim": obs.baseline_ssim,
                        "last_run_at": obs.last_run_at.isoformat() if obs.last_run_at else None,
                        "low_confidence_rate": obs.low_confidence_rate,
                        "confidence_samples": obs.confidence_samples,
                        "population": obs.population,
                    },
                },
                indent=2,
            )
        )
    else:
        print(decision.summary())


@loop_app.command("run")
def run_cmd(
    config: Path = typer.Option(None, "--config", help=_CONFIG_HELP),
    monitor_db: str = typer.Option(None, "--db", envvar="SEMLAYOUT_MONITOR_DB", help=_DB_HELP),
    feedback_uri: str = typer.Option(None, "--feedback-uri", "--feedback-dir", help=_FEEDBACK_HELP),
    intake_uri: str = typer.Option(None, "--intake-uri", help=_INTAKE_HELP),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help=_TRACKING_HELP),
    model_name: str = typer.Option(None, "--model-name", help=_MODEL_NAME_HELP),
    kfp_host: str = typer.Option(
        None, "--kfp-host", help="submit to this KFP host instead of kfp.local"
    ),
    force: bool = typer.Option(
        False, "--force", help="run even if no trigger fires (cooldown still holds)"
    ),
    set_: list[str] = typer.Option([], "--set", help="override KEY=VALUE (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="decide and say whether a fine-tune would start; start nothing"
    ),
) -> None:
    """Check the triggers and, when they fire, run the fine-tune pipeline once."""
    from semlayout.continual import find_launcher, load_loop_config, run

    overrides = _options(monitor_db, feedback_uri, intake_uri, tracking_uri, model_name, set_)
    if kfp_host is not None:
        overrides["kfp_host"] = kfp_host
    cfg = load_loop_config(config, overrides)
    launcher = find_launcher(cfg)
    if dry_run:
        _dry_run(cfg, force, as_json)
        return
    if as_json:
        # kfp.local prints every task's log to stdout: keep stdout for the JSON document alone
        import contextlib
        import sys

        with contextlib.redirect_stdout(sys.stderr):
            outcome = run(cfg, launcher, force=force)
    else:
        outcome = run(cfg, launcher, force=force)
    if as_json:
        print(json.dumps(outcome, indent=2, default=str))
    else:
        from semlayout.triggers import Reason, TriggerDecision

        d = outcome["decision"]
        print(
            TriggerDecision(
                fire=d["fire"],
                held_by_cooldown=d["held_by_cooldown"],
                reasons=[Reason(**r) for r in d["reasons"]],
                checked_at=_iso(d["checked_at"]),
                cooldown_until=_iso(d["cooldown_until"]) if d["cooldown_until"] else None,
            ).summary()
        )
        print(f"status: {outcome['status']}")
        for key in (
            "message",
            "n_reviewed",
            "n_qc_failed",
            "run_id",
            "gate_passed",
            "model_version",
            "gate_reasons",
        ):
            if outcome.get(key) not in (None, "", []):
                print(f"{key}: {outcome[key]}")
    if outcome["status"] == "failed":
        raise typer.Exit(1)


def _dry_run(cfg: object, force: bool, as_json: bool) -> None:
    """What `loop run` would do now: the decision, and whether (and where) it would launch."""
    from semlayout.continual import check

    decision, obs = check(cfg)  # type: ignore[arg-type]
    fires = decision.fire or (force and not decision.held_by_cooldown)
    where = getattr(cfg, "kfp_host", None) or "kfp.local on this machine"
    out = {
        "dry_run": True,
        **decision.to_dict(),
        "would_launch": fires,
        "where": where,
        "pending_pairs": obs.new_pairs_feedback + obs.new_pairs_intake,
    }
    if as_json:
        print(json.dumps(out, indent=2, default=str))
        return
    print(decision.summary())
    verdict = f"would start the fine-tune pipeline on {where}" if fires else "would start nothing"
    print(f"dry run, nothing started: {verdict} ({out['pending_pairs']} reviewed pairs pending)")


def _iso(value: str):
    from datetime import datetime

    return datetime.fromisoformat(value)


def register(app: typer.Typer) -> None:
    app.add_typer(loop_app, name="loop")
