"""The continuous-learning loop: observe -> decide -> fine-tune -> gated registration.

`check` gathers what the monitoring store (SQLite or PostgreSQL), the feedback store, the
S3 intake bucket and the registry say, and asks the trigger policy
(`semlayout.triggers.decide`). `run` acts on a firing decision: it collects the reviewed
pairs (the API's feedback store + complete S3 intake batches) into one pair folder, hands it
to a *launcher* — the fine-tune pipeline under kfp.local or on a KFP host, supplied by the
caller so this library never imports kfp — and records the decision and the run in the
monitoring store and in MLflow.

A run consumes what it collected: "new reviewed pairs" are the pairs no completed run has
used yet (`pending_pairs`), counted by `check` and collected by `run` from the same list.
When a run completes (gate passed or failed, or submitted to a KFP host) its pairs go into
the `loop_consumed` table of the monitoring store in one transaction, QC-rejected ones
included (their number is in the outcome); a run that fails or crashes consumes nothing.

Failures never move an alias: registration of a `challenger` is the pipeline's gated
last step, and `champion` moves only by a release manager's `registry approve`. A run
that fails is recorded as not fired, so the cooldown does not start and the next check
starts clean with the same pairs still counted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from semlayout.atomic import atomic_write_text
from semlayout.config import read_config_file
from semlayout.directions import DIRECTIONS
from semlayout.errors import SemlayoutError, validation_error
from semlayout.gate import DEFAULT_TOLERANCE
from semlayout.monitoring.store import MonitorStore
from semlayout.reviewed import (
    ConsumedLedger,
    ReviewedPair,
    collect_reviewed,
    pending_pairs,
    qc_failed_ids,
)
from semlayout.train.recipe import AdaptConfig
from semlayout.triggers import Observations, TriggerDecision, TriggerPolicy, decide


class LoopConfig(BaseModel):
    """Where the loop looks and what it runs. Loaded from YAML (`configs/loop.yaml`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    policy: TriggerPolicy = Field(default_factory=lambda: TriggerPolicy())
    monitor_db: str = Field(
        "outputs/serving/monitor.db",
        description="the server's monitoring store: a SQLite path or a postgresql:// URL",
    )
    feedback_uri: str = Field(
        "",
        # `feedback_dir`: the name of this key before the feedback store could be on S3
        validation_alias=AliasChoices("feedback_uri", "feedback_dir"),
        description="the server's --feedback-uri (folder or s3://): its rows are the API pairs",
    )
    intake_uri: str = Field("", description="s3://bucket/prefix of reviewed intake batches")
    tracking_uri: str = Field("", description="MLflow tracking URI ('' = $MLFLOW_TRACKING_URI)")
    model_name: str = "semlayout"
    original_data_uri: str = Field(
        "", description="original training pairs, for replay and forgetting"
    )
    replay_n: int = Field(64, ge=0, description="original pairs mixed into the fine-tune set")
    config: str = Field("small", description="experiment config name or path for the run settings")
    finetune_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="experiment-config overrides for the fine-tune run (e.g. train.precision)",
    )
    adaptation: AdaptConfig = Field(
        default_factory=lambda: AdaptConfig(),
        description="the fine-tune recipe (semlayout.train.recipe; measured in "
        "docs/adaptation.md)",
    )
    floors: dict[str, float] = Field(
        default_factory=dict, description="absolute SSIM floors per direction"
    )
    tolerance: float = Field(
        DEFAULT_TOLERANCE, ge=0, description="allowed SSIM loss on the original test shard"
    )
    min_improvement: float = Field(
        0.0, description="required SSIM gain on the new pairs' test split"
    )
    workdir: str = Field("outputs/loop", description="where runs keep their inputs and outputs")
    kfp_host: str = Field("", description="submit to this KFP host instead of running locally")


def load_loop_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None
) -> LoopConfig:
    """The loop config from YAML (or nothing) plus dotted-key overrides (`policy.min_new_pairs`).

    Every mistake is one `SemlayoutError` line naming the key
    (`semlayout.errors.validation_error`)."""
    data: dict[str, Any] = {}
    if path:
        data = read_config_file(path, "loop config") or {}
        if not isinstance(data, dict):
            raise SemlayoutError(f"loop config {path}: expected a mapping")
    for dotted, value in (overrides or {}).items():
        node = data
        keys = dotted.split(".")
        for i, k in enumerate(keys[:-1]):
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise SemlayoutError(
                    f"invalid loop config: '{'.'.join(keys[:i + 1])}' is not a mapping, "
                    f"so '{dotted}' cannot be set"
                )
        node[keys[-1]] = value
    try:
        return LoopConfig.model_validate(data)
    except ValidationError as err:
        raise validation_error(err, "loop config") from None


# ---------------------------------------------------------------- observing
def open_monitor_store(cfg: LoopConfig) -> MonitorStore:
    """The server's monitoring store (a SQLite file must exist: the loop never creates one)."""
    from semlayout.monitoring.database import parse_db

    db = parse_db(cfg.monitor_db)
    if db.path is not None and not db.path.is_file():
        raise SemlayoutError(
            f"monitoring store not found: {db.path} (is the server's --db elsewhere?)"
        )
    return MonitorStore(db, create=False)


def baseline_ssim(tracking_uri: str | None, model_name: str) -> dict[str, float]:
    """The champion's promotion SSIM per direction (what the gate judged it on)."""
    from semlayout.registry import Registry

    try:
        registry = Registry.existing(tracking_uri or None)
        metrics = (registry.champion_metrics(model_name) if registry else None) or {}
    except SemlayoutError:  # no registry yet: no champion, so no baseline to drop below
        metrics = {}
    out: dict[str, float] = {}
    for d in DIRECTIONS:
        value = (metrics.get(d) or {}).get("ssim")
        if isinstance(value, int | float):
            out[d] = float(value)
    return out


def observe(
    cfg: LoopConfig, store: MonitorStore, pending: list[ReviewedPair] | None = None
) -> Observations:
    if pending is None:
        pending = pending_pairs(cfg, store)
    last = store.last_trigger_time()
    rate, n = store.drift_stats(cfg.policy.drift_window)
    rolling: dict[str, float] = {}
    samples: dict[str, int] = {}
    for d in DIRECTIONS:
        value, k = store.rolling_ssim_stats(d, cfg.policy.ssim_window)
        if value is not None:
            rolling[d], samples[d] = value, k
    from semlayout.monitoring.confidence_store import low_confidence_rate
    from semlayout.monitoring.population import loop_population

    pol = cfg.policy
    low, n_conf = low_confidence_rate(store, pol.low_confidence_window, pol.low_confidence)
    return Observations(
        low_confidence_rate=low,
        confidence_samples=n_conf,
        population=loop_population(
            store,
            champion_checkpoint(cfg),
            pol.population_window,
            pol.population_alpha,
            pol.min_population_samples,
        ),
        new_pairs_feedback=sum(p.source == "feedback" for p in pending),
        new_pairs_intake=sum(p.source == "intake" for p in pending),
        drift_rate=rate,
        drift_samples=n,
        rolling_ssim=rolling,
        ssim_samples=samples,
        baseline_ssim=baseline_ssim(cfg.tracking_uri, cfg.model_name),
        last_run_at=last,
    )


def champion_checkpoint(cfg: LoopConfig) -> Path | None:
    """The champion's local checkpoint folder (its calibration and drift reference beside
    it), or None when there is no registry or champion to ask."""
    from semlayout.model_uri import ModelUri
    from semlayout.registry import CHAMPION, Registry

    try:
        registry = Registry.existing(cfg.tracking_uri or None)
        if registry is None or registry.champion_version(cfg.model_name) is None:
            return None
        return registry.fetch(ModelUri(cfg.model_name, alias=CHAMPION))
    except SemlayoutError:  # no registry or no champion: no reference to test against
        return None


def check(cfg: LoopConfig, now: datetime | None = None) -> tuple[TriggerDecision, Observations]:
    store = open_monitor_store(cfg)
    try:
        obs = observe(cfg, store)
    finally:
        store.close()
    return decide(cfg.policy, obs, now or datetime.now(UTC)), obs


# ---------------------------------------------------------------- acting
@dataclass
class LaunchRequest:
    """What the fine-tune pipeline needs; a launcher turns it into a run."""

    reviewed_dir: Path
    n_reviewed: int
    cfg: LoopConfig
    run_dir: Path


@dataclass
class LaunchResult:
    run_id: str
    gate_passed: bool | None = None
    model_version: str | None = None
    gate_reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


Launcher = Callable[[LaunchRequest], LaunchResult]

# who runs the fine-tune: a package above the library (the KFP pipelines) registers a factory
# `LoopConfig -> Launcher` under this entry-point group; the library never imports it
LAUNCHER_GROUP = "semlayout.launchers"


def find_launcher(cfg: LoopConfig, name: str = "kfp") -> Launcher:
    """The installed launcher `name` built for `cfg` (`semlayout_pipelines.launch.launcher_for`)."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=LAUNCHER_GROUP)}
    if name not in found:
        raise SemlayoutError(
            f"no fine-tune launcher '{name}' is installed (entry point group {LAUNCHER_GROUP}; "
            f"found {sorted(found) or 'none'}): install semlayout with its pipelines package"
        )
    factory = found[name].load()
    return factory(cfg)


def _log_to_mlflow(
    cfg: LoopConfig, decision: TriggerDecision, outcome: dict[str, Any]
) -> str | None:
    tracking = cfg.tracking_uri
    if not tracking:
        import os

        tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking:
        return None
    import mlflow

    from semlayout.registry import Registry

    registry = Registry(tracking, create=True)
    # the experiment keeps its artifacts beside a SQLite registry (not ./mlruns in the cwd), and the
    # tracking URI is scoped to this block instead of being left set process-wide
    exp_id = registry.experiment_id("semlayout-loop")
    with (
        registry.scoped(),
        mlflow.start_run(
            experiment_id=exp_id, run_name=f"loop-{decision.checked_at:%Y%m%dT%H%M%S}"
        ) as run,
    ):
        mlflow.set_tags(
            {
                "semlayout.continual.fired": str(decision.fire),
                "semlayout.continual.status": outcome.get("status", ""),
                "semlayout.continual.reasons": "; ".join(r.name for r in decision.fired_reasons),
            }
        )
        for r in decision.reasons:
            if isinstance(r.value, int | float):
                mlflow.log_metric(f"trigger.{r.name}", float(r.value))
        mlflow.log_dict({"decision": decision.to_dict(), "outcome": outcome}, "loop_decision.json")
        return str(run.info.run_id)


def run(
    cfg: LoopConfig, launcher: Launcher, now: datetime | None = None, force: bool = False
) -> dict[str, Any]:
    """Check, and when the policy fires (or `force`), launch the fine-tune pipeline once."""
    store = open_monitor_store(cfg)
    try:
        return _run(cfg, store, launcher, now, force)
    finally:
        store.close()


def _run(
    cfg: LoopConfig, store: MonitorStore, launcher: Launcher, now: datetime | None, force: bool
) -> dict[str, Any]:
    pending = pending_pairs(cfg, store)
    obs = observe(cfg, store, pending)
    decision = decide(cfg.policy, obs, now or datetime.now(UTC))
    outcome: dict[str, Any] = {"decision": decision.to_dict(), "status": "not_triggered"}
    if not (decision.fire or (force and not decision.held_by_cooldown)):
        if decision.held_by_cooldown:
            outcome["status"] = "held_by_cooldown"
        store.record_trigger_decision(False, outcome)
        return outcome

    run_dir = (
        Path(cfg.workdir)
        / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}-{int(time.time() * 1000) % 1000:03d}"
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    reviewed = run_dir / "reviewed"
    collected = collect_reviewed(cfg, store, reviewed, pending)
    n = len(collected)
    outcome["n_reviewed"] = n
    if n == 0:
        outcome["status"] = "no_reviewed_pairs"
        outcome["message"] = (
            "the trigger fired but there are no reviewed pairs to fine-tune on; stopped"
        )
        store.record_trigger_decision(False, outcome)
        outcome["mlflow_run_id"] = _log_to_mlflow(cfg, decision, outcome)
        return outcome

    t0 = time.perf_counter()
    try:
        result = launcher(
            LaunchRequest(reviewed_dir=reviewed, n_reviewed=n, cfg=cfg, run_dir=run_dir)
        )
    except SemlayoutError as err:
        outcome.update(
            status="failed", message=str(err), seconds=round(time.perf_counter() - t0, 1)
        )
        store.record_trigger_decision(False, outcome)
        outcome["mlflow_run_id"] = _log_to_mlflow(cfg, decision, outcome)
        return outcome
    qc_failed = qc_failed_ids(run_dir, set(collected))
    outcome.update(
        status="launched"
        if result.gate_passed is None
        else ("registered" if result.gate_passed else "gate_failed"),
        run_id=result.run_id,
        gate_passed=result.gate_passed,
        model_version=result.model_version,
        gate_reasons=result.gate_reasons,
        seconds=round(time.perf_counter() - t0, 1),
        n_consumed=n,
        n_qc_failed=None if qc_failed is None else len(qc_failed),
        qc_failed_ids=sorted(qc_failed or []),
        **result.details,
    )
    # the pairs first: should the process die between the two writes, a completed run's pairs are
    # not trained on twice (the cooldown just does not start)
    ConsumedLedger(store).consume(collected, result.run_id, qc_failed)
    store.record_trigger_decision(True, outcome, run_id=result.run_id)
    outcome["mlflow_run_id"] = _log_to_mlflow(cfg, decision, outcome)
    atomic_write_text(run_dir / "outcome.json", json.dumps(outcome, indent=2, default=str))
    return outcome
