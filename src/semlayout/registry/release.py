"""`Registry`: log runs, register gated versions, and the release manager's decisions.

Every decision writes its tags first and moves aliases after, so an alias never points at a
version without the tags that explain why; each one is appended to the audit trail of the
versions it touches and of the model (`semlayout.registry.audit_tags`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semlayout.errors import SemlayoutError
from semlayout.model_uri import ModelUri
from semlayout.registry.audit_tags import (
    AUDIT_TAG,
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    MODEL_TAG_LIMIT,
    PREVIOUS,
    compact_metrics,
    fit_list,
    git_commit,
    now,
    read_list,
    require,
    to_json,
    version_description,
)
from semlayout.registry.lookups import RegistryReader
from semlayout.registry.model_cache import DRIFT_ARTIFACTS, DRIFT_TAG
from semlayout.registry.profile_tags import TAG_PROFILES, profile_tags
from semlayout.registry.run_logging import (
    TAG_CONFIG_HASH,
    TAG_MODEL_URI,
    TAG_POLARITIES,
    checkpoint_config,
    log_curves,
    log_datasets,
    log_run_contents,
    run_tags,
)
from semlayout.registry.tracking import mlflow_errors, sqlite_path

if TYPE_CHECKING:
    from mlflow.entities import Run

    from semlayout.gate import GateResult

PathLike = str | os.PathLike[str]


class Registry(RegistryReader):
    """An MLflow tracking server / model registry: everything `RegistryReader` reads, plus
    logging training runs, registering versions and approve / reject / rollback.

    `Registry(tracking_uri=None, create=False)`: the URI (default `$MLFLOW_TRACKING_URI`, else
    `sqlite:///$PWD/outputs/mlflow/mlflow.db`) is checked once, here; `create=True` lets a
    SQLite registry be created (logging a run), `create=False` refuses a missing one.
    """

    # ------------------------------------------------------------------------- runs
    def experiment_id(self, experiment: str) -> str:
        """The id of `experiment`, created when missing (artifacts beside a SQLite database,
        not in MLflow's ./mlruns of whatever the cwd is)."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise SemlayoutError(
                    f"MLflow experiment '{experiment}' is deleted; restore it or pick another name"
                )
            return str(exp.experiment_id)
        location = None
        db = sqlite_path(self.uri)
        if db is not None:
            location = (db.parent / "artifacts").absolute().as_uri()
        return str(self.client.create_experiment(experiment, artifact_location=location))

    def log_run(
        self,
        experiment: str,
        checkpoint_dir: PathLike,
        metrics: dict[str, Any],
        params: dict[str, Any] | None = None,
        config: Any = None,
        report_html: PathLike | None = None,
        sample_grid_png: PathLike | None = None,
        tags: dict[str, str] | None = None,
        include_train_state: bool = False,
        run_name: str | None = None,
        datasets: list[dict[str, Any]] | None = None,
        training_window_ms: tuple[int, int] | None = None,
        extra_json: dict[str, Any] | None = None,
    ) -> str:
        """Log one finished training run; returns its run id.

        Logged: `params` and the config (flattened as `cfg.*` params; default: the one in the
        checkpoint's config.json), `metrics` flattened (`sem2layout.ssim`, ...), `metrics.json`
        and `config.json` artifacts, the report (`report.html`) and sample grid, and a pyfunc
        model (`model`) holding the checkpoint folder, built from code (`pyfunc_model.py`):
        nothing is pickled. The training's curves when the checkpoint folder carries
        steps.jsonl / history.json; `datasets` as MLflow dataset inputs; `extra_json` as JSON
        artifacts ({file name: object}). `training_window_ms` = (start, end) in Unix ms makes
        the run's start and end the training's, so its duration is the training's.
        """
        import mlflow

        ckpt = Path(checkpoint_dir)
        cfg_dict = checkpoint_config(ckpt, config)
        with mlflow_errors(f"MLflow experiment '{experiment}'"):
            exp_id = self.experiment_id(experiment)
            run = self.client.create_run(
                exp_id,
                start_time=training_window_ms[0] if training_window_ms else None,
                tags=run_tags(ckpt, cfg_dict, tags),
                run_name=run_name,
            )
        run_id = str(run.info.run_id)
        with self.scoped(), mlflow.start_run(run_id=run_id):
            log_run_contents(
                ckpt, metrics, params, cfg_dict, report_html, sample_grid_png, include_train_state
            )
            log_curves(self.client, run_id, ckpt)
            log_datasets(datasets or [])
            for file_name, obj in (extra_json or {}).items():
                mlflow.log_dict(obj, file_name)
        if training_window_ms:
            self.client.set_terminated(run_id, "FINISHED", end_time=training_window_ms[1])
        return run_id

    # ------------------------------------------------------------------------- registration
    def register(
        self,
        name: str,
        run_id: str,
        gate: GateResult,
        lineage: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        drift_reference: PathLike | None = None,
        profile: dict[str, Any] | None = None,
    ) -> int:
        """Register the run's pyfunc model as a new version of `name`; returns its number.

        `drift_reference` (the training shards' `reference_stats.json`, or the shard folder)
        travels with the version: it is logged to the run as `drift/` with the thresholds
        calibrated now (`semlayout.monitoring.drift.write_drift_bundle`) BEFORE the version
        exists, and the version's tag `drift_reference` names it; the server loads it with the
        weights and swaps both together.

        Tags set at creation: `lineage.<key>` for every `lineage` item (data URI and content
        hash, pipeline run id, ...; `config_hash` and `git_commit` are filled in when absent),
        `gate_passed`, `gate_result` (the GateResult JSON), `gate_metrics` (the metrics it
        was judged on: `metrics` if given, else the run's `metrics.json`) and `polarities`
        (the contrast polarities the model learned, "+1,-1"; from the run), `profiles` and
        `profile`'s tags (what it was adapted to: `registry.profile_tags`). The alias
        `challenger` moves to the new version only if the gate passed.
        """
        name = require(name, "model name")
        with mlflow_errors(f"MLflow run '{run_id}'"):
            run = self.client.get_run(run_id)
        model_uri = run.data.tags.get(TAG_MODEL_URI)
        if not model_uri:
            raise SemlayoutError(
                f"run {run_id} has no logged semlayout model (tag {TAG_MODEL_URI}); "
                "log it with Registry.log_run"
            )
        if metrics is None:
            with contextlib.suppress(Exception):
                metrics = self.run_metrics(run_id)
        tags = self._registration_tags(run, gate, lineage, metrics)
        tags.update(profile_tags(profile))
        if run.data.tags.get(TAG_PROFILES):
            tags[TAG_PROFILES] = run.data.tags[TAG_PROFILES]
        if drift_reference is not None:
            tags[DRIFT_TAG] = self._log_drift_reference(run_id, drift_reference)
        self._ensure_model(name)
        with mlflow_errors(f"registering run {run_id} as '{name}'"), self.scoped():
            mv = self.client.create_model_version(
                name,
                source=model_uri,
                run_id=run_id,
                tags=tags,
                model_id=ModelUri.logged_model_id(model_uri),
            )
        version = str(mv.version)
        verdict = "passed" if gate.passed else "failed"
        self._audit(
            name,
            [version],
            {
                "action": "registered",
                "version": int(version),
                "by": "pipeline",
                "reason": f"gate {verdict}",
                "run_id": run_id,
            },
        )
        if gate.passed:
            self.client.set_registered_model_alias(name, CHALLENGER, version)
            self._audit(
                name,
                [version],
                {
                    "action": "challenger",
                    "version": int(version),
                    "by": "pipeline",
                    "reason": "gate passed",
                },
            )
        return int(version)

    def _log_drift_reference(self, run_id: str, reference: PathLike) -> str:
        import tempfile

        from semlayout.monitoring.drift import write_drift_bundle

        with tempfile.TemporaryDirectory(prefix="semlayout-drift-") as tmp:
            bundle = write_drift_bundle(reference, Path(tmp) / DRIFT_ARTIFACTS)
            with mlflow_errors(f"logging the drift reference of run {run_id}"), self.scoped():
                self.client.log_artifacts(run_id, str(bundle), artifact_path=DRIFT_ARTIFACTS)
        return DRIFT_ARTIFACTS

    @staticmethod
    def _registration_tags(
        run: Run,
        gate: GateResult,
        lineage: dict[str, Any] | None,
        metrics: dict[str, Any] | None,
    ) -> dict[str, str]:
        info = dict(lineage or {})
        info.setdefault("config_hash", run.data.tags.get(TAG_CONFIG_HASH, ""))
        if not info.get("git_commit"):
            info["git_commit"] = git_commit() or "unknown"
        info.setdefault("run_id", run.info.run_id)
        tags = {f"lineage.{k}": v if isinstance(v, str) else to_json(v) for k, v in info.items()}
        tags.update(
            {
                "gate_passed": "true" if gate.passed else "false",
                "gate_result": gate.to_json(),
                "gate_metrics": to_json(compact_metrics(metrics)),
                "registered_at": now(),
                TAG_POLARITIES: run.data.tags.get(TAG_POLARITIES, "+1"),
            }
        )
        sure = gate.confidence()
        if sure is not None:
            tags["gate_confidence"] = f"{sure:.3f}"
        return tags

    def _ensure_model(self, name: str) -> None:
        try:
            self.client.get_registered_model(name)
        except Exception:
            with mlflow_errors(f"registered model '{name}'"):
                self.client.create_registered_model(
                    name, description="semlayout SEM <-> layout translator"
                )

    def _audit(self, name: str, versions: list[str], event: dict[str, Any]) -> None:
        """Append `event` to the audit log of each version in `versions` and of the model;
        the versions' descriptions are rewritten to match."""
        event = {"at": now(), **event}
        for v in versions:
            mv = self.client.get_model_version(name, v)
            log = read_list(mv.tags or {}, AUDIT_TAG) + [event]
            self.client.set_model_version_tag(name, v, AUDIT_TAG, to_json(log))
            self.refresh_description(name, v)
        model = self.client.get_registered_model(name)
        log = read_list(model.tags or {}, AUDIT_TAG) + [event]
        self.client.set_registered_model_tag(name, AUDIT_TAG, fit_list(log, MODEL_TAG_LIMIT))

    def refresh_description(self, name: str, version: str) -> None:
        """The version's MLflow description: a readable summary of its tags (verdict, data,
        comparison page, audit trail)."""
        mv = self.client.get_model_version(name, version)
        text = version_description(version, dict(mv.tags or {}))
        self.client.update_model_version(name, version, description=text)

    def attach_comparison(self, name: str, version: int | str, html: PathLike, against: int) -> str:
        """Attach a comparison page (`semlayout.comparison_report`) to a version; its URI."""
        from semlayout.registry.attachments import attach_comparison

        return attach_comparison(self, name, version, Path(html), against)

    def _history(self, name: str) -> list[str]:
        """`champion_history`: the versions that were champion, in order."""
        model = self.client.get_registered_model(name)
        return [str(x) for x in read_list(model.tags or {}, HISTORY_TAG)]

    def _set_history(self, name: str, history: list[str]) -> None:
        self.client.set_registered_model_tag(name, HISTORY_TAG, fit_list(history, MODEL_TAG_LIMIT))

    def _set_decision(self, name: str, v: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, v, key, value)

    # ------------------------------------------------------------------------- decisions
    def approve(
        self, name: str, version: int | str, by: str, reason: str, dry_run: bool = False
    ) -> dict[str, Any]:
        """Promote `version` to `champion` (the old champion becomes `previous-champion`).

        Refused: an unknown version, a version whose gate failed or has no verdict, a rejected
        version, the current champion again, an empty `by` / `reason`. `dry_run`: every check,
        no change; returns what would happen.
        """
        by, reason = require(by, "--by (who approves)"), require(reason, "--reason")
        mv = self.version(name, version)
        v = str(mv.version)
        _check_approvable(name, v, mv.tags or {})
        old = self.alias_version(name, CHAMPION)
        if old == v:
            raise SemlayoutError(f"model '{name}' version {v} is already the champion")
        if dry_run:
            prev = int(old) if old else None
            return {"name": name, "champion": int(v), "previous_champion": prev, "dry_run": True}
        at = now()
        # 1. tags first: no alias ever points at a version without its approval record
        self._set_decision(
            name, v, {"approved_by": by, "approved_at": at, "approval_reason": reason}
        )
        history = self._history(name)
        if old and (not history or history[-1] != old):
            history.append(old)  # a champion set by hand outside semlayout
        history.append(v)
        self._set_history(name, history)
        event = {
            "action": "approved",
            "version": int(v),
            "by": by,
            "reason": reason,
            "previous_champion": int(old) if old else None,
        }
        self._audit(name, [v] + ([old] if old else []), event)
        # 2. then the aliases
        if old:
            self.client.set_registered_model_alias(name, PREVIOUS, old)
        self.client.set_registered_model_alias(name, CHAMPION, v)
        if self.alias_version(name, CHALLENGER) == v:
            self.client.delete_registered_model_alias(name, CHALLENGER)
        return {
            "name": name,
            "champion": int(v),
            "previous_champion": int(old) if old else None,
            "at": at,
        }

    def reject(
        self, name: str, version: int | str, by: str, reason: str, dry_run: bool = False
    ) -> dict[str, Any]:
        """Record a rejection; the `challenger` alias is removed if it points at `version`.
        `dry_run`: every check, no change."""
        by, reason = require(by, "--by (who rejects)"), require(reason, "--reason")
        mv = self.version(name, version)
        v = str(mv.version)
        if self.alias_version(name, CHAMPION) == v:
            raise SemlayoutError(
                f"model '{name}' version {v} is the champion; "
                "use `semlayout registry rollback` instead"
            )
        if (mv.tags or {}).get("rejected_by"):
            raise SemlayoutError(f"model '{name}' version {v} is already rejected")
        if dry_run:
            removed = self.alias_version(name, CHALLENGER) == v
            return {
                "name": name,
                "rejected": int(v),
                "challenger_removed": removed,
                "dry_run": True,
            }
        at = now()
        self._set_decision(
            name, v, {"rejected_by": by, "rejected_at": at, "rejection_reason": reason}
        )
        self._audit(
            name, [v], {"action": "rejected", "version": int(v), "by": by, "reason": reason}
        )
        removed = False
        if self.alias_version(name, CHALLENGER) == v:
            self.client.delete_registered_model_alias(name, CHALLENGER)
            removed = True
        return {"name": name, "rejected": int(v), "challenger_removed": removed, "at": at}

    def rollback(self, name: str, by: str, reason: str, dry_run: bool = False) -> dict[str, Any]:
        """`champion` <- `previous-champion`; `previous-champion` <- the champion before that
        (from `champion_history`, skipping rolled-back versions), or removed when there is
        none. `dry_run`: every check, no change."""
        by, reason = require(by, "--by (who rolls back)"), require(reason, "--reason")
        cur = self.alias_version(name, CHAMPION)
        prev = self.alias_version(name, PREVIOUS)
        if not cur:
            raise SemlayoutError(f"model '{name}' has no champion to roll back")
        if not prev:
            raise SemlayoutError(f"model '{name}' has no previous-champion to roll back to")
        history = [h for h in self._history(name) if h != cur]
        new_prev = self._champion_before(name, history, prev)
        if dry_run:
            return {
                "name": name,
                "champion": int(prev),
                "rolled_back": int(cur),
                "previous_champion": int(new_prev) if new_prev else None,
                "dry_run": True,
            }
        at = now()
        self._set_decision(
            name, cur, {"rolled_back_by": by, "rolled_back_at": at, "rollback_reason": reason}
        )
        self._set_history(name, history)
        self._audit(
            name,
            [cur, prev],
            {
                "action": "rollback",
                "from_version": int(cur),
                "version": int(prev),
                "by": by,
                "reason": reason,
            },
        )
        self.client.set_registered_model_alias(name, CHAMPION, prev)
        if new_prev:
            self.client.set_registered_model_alias(name, PREVIOUS, new_prev)
        else:
            self.client.delete_registered_model_alias(name, PREVIOUS)
        return {
            "name": name,
            "champion": int(prev),
            "rolled_back": int(cur),
            "previous_champion": int(new_prev) if new_prev else None,
            "at": at,
        }

    def _champion_before(self, name: str, history: list[str], prev: str) -> str | None:
        """The latest champion before `prev` in `history` that was not rolled back."""
        before = history[: history.index(prev)] if prev in history else []
        for h in reversed(before):
            if not (self.client.get_model_version(name, h).tags or {}).get("rolled_back_by"):
                return h
        return None


def _check_approvable(name: str, v: str, tags: dict[str, str]) -> None:
    gate = tags.get("gate_passed")
    if gate is None:
        raise SemlayoutError(
            f"model '{name}' version {v} has no gate verdict; only gated versions can be approved"
        )
    if gate != "true":
        raise SemlayoutError(f"model '{name}' version {v} failed the gate; it cannot be approved")
    if tags.get("rejected_by"):
        raise SemlayoutError(
            f"model '{name}' version {v} was rejected by {tags['rejected_by']} "
            f"({tags.get('rejection_reason', '')}); register a new version instead"
        )
