"""The continuous-learning loop: observe -> decide -> fine-tune -> gated registration.

`check` gathers what the monitors, the feedback store, the S3 intake bucket and the
registry say, and asks the trigger policy (`semlayout.triggers.decide`). `run` acts on
a firing decision: it collects the reviewed pairs (API feedback folder + complete S3
intake batches) into one pair folder, hands it to a *launcher* — the fine-tune pipeline
under kfp.local or on a KFP host, supplied by the caller so this library never imports
kfp — and records the decision and the run in the monitoring store and in MLflow.

Failures never move an alias: registration of a `challenger` is the pipeline's gated
last step, and `champion` moves only by a release manager's `registry approve`. A run
that fails is recorded as not fired, so the cooldown does not start and the next check
starts clean with the same pairs still counted.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from semlayout.errors import SemlayoutError
from semlayout.triggers import DIRECTIONS, Observations, TriggerDecision, TriggerPolicy, decide


class LoopConfig(BaseModel):
    """Where the loop looks and what it runs. Loaded from YAML (`configs/loop.yaml`)."""

    model_config = ConfigDict(extra="forbid")

    policy: TriggerPolicy = Field(default_factory=TriggerPolicy)
    monitor_db: str = Field("outputs/serving/monitor.db", description="the server's SQLite store")
    feedback_dir: str = Field("", description="pair folder the API writes reviewed pairs into")
    intake_uri: str = Field("", description="s3://bucket/prefix of reviewed intake batches")
    tracking_uri: str = Field("", description="MLflow tracking URI ('' = $MLFLOW_TRACKING_URI)")
    model_name: str = "semlayout"
    original_data_uri: str = Field("", description="original training pairs, for replay and forgetting")
    replay_n: int = Field(64, ge=0, description="original pairs mixed into the fine-tune set")
    config: str = Field("small", description="experiment config name or path for the run settings")
    finetune_overrides: dict[str, Any] = Field(
        default_factory=lambda: {"train.lr": 5e-5, "train.epochs": 3, "train.decay_start_epoch": 1})
    floors: dict[str, float] = Field(default_factory=dict, description="absolute SSIM floors per direction")
    tolerance: float = Field(0.01, ge=0, description="allowed SSIM loss on the original test shard")
    min_improvement: float = Field(0.0, description="required SSIM gain on the new pairs' test split")
    workdir: str = Field("outputs/loop", description="where runs keep their inputs and outputs")
    kfp_host: str = Field("", description="submit to this KFP host instead of running locally")


def load_loop_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> LoopConfig:
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise SemlayoutError(f"loop config not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise SemlayoutError(f"loop config {p} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise SemlayoutError(f"loop config {p}: expected a mapping")
    for dotted, value in (overrides or {}).items():
        node = data
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    try:
        return LoopConfig.model_validate(data)
    except ValidationError as err:
        parts = []
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"])
            parts.append(f"unknown key '{loc}'" if e["type"] == "extra_forbidden" else f"{loc}: {e['msg']}")
        raise SemlayoutError(f"invalid loop config: {'; '.join(parts)}") from None


# ---------------------------------------------------------------- observing
def _store(cfg: LoopConfig):  # -> MonitorStore
    from semlayout.monitoring.store import MonitorStore

    if not Path(cfg.monitor_db).is_file():
        raise SemlayoutError(f"monitoring store not found: {cfg.monitor_db} (is the server's --db elsewhere?)")
    return MonitorStore(cfg.monitor_db, create=False)


def intake_pairs_since(intake_uri: str, since: datetime | None) -> int:
    """Pairs in complete intake batches created after `since` (all batches when None)."""
    if not intake_uri:
        return 0
    from semlayout.intake import list_batches

    total = 0
    for batch in list_batches(intake_uri):
        created = _parse_time(batch.get("created"))
        if since is None or created is None or created > since:
            # `list_batches` names the count "pairs" (batch.json's counts.pairs)
            total += int(batch.get("pairs") or 0)
    return total


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), tz=UTC)
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def baseline_ssim(tracking_uri: str | None, model_name: str) -> dict[str, float]:
    """The champion's promotion SSIM per direction (what the gate judged it on)."""
    from semlayout.registry import champion_metrics

    try:
        metrics = champion_metrics(tracking_uri or None, model_name) or {}
    except SemlayoutError:  # no registry yet: no champion, so no baseline to drop below
        metrics = {}
    out = {}
    for d in DIRECTIONS:
        value = (metrics.get(d) or {}).get("ssim")
        if isinstance(value, int | float):
            out[d] = float(value)
    return out


def observe(cfg: LoopConfig, store: Any = None) -> Observations:
    store = store or _store(cfg)
    last = store.last_trigger_time()
    rate, n = store.drift_stats(cfg.policy.drift_window)
    rolling: dict[str, float] = {}
    samples: dict[str, int] = {}
    for d in DIRECTIONS:
        value, k = store.rolling_ssim_stats(d, cfg.policy.ssim_window)
        if value is not None:
            rolling[d], samples[d] = value, k
    return Observations(
        new_pairs_feedback=store.feedback_count(since=last),
        new_pairs_intake=intake_pairs_since(cfg.intake_uri, last),
        drift_rate=rate,
        drift_samples=n,
        rolling_ssim=rolling,
        ssim_samples=samples,
        baseline_ssim=baseline_ssim(cfg.tracking_uri, cfg.model_name),
        last_run_at=last,
    )


def check(cfg: LoopConfig, now: datetime | None = None) -> tuple[TriggerDecision, Observations]:
    obs = observe(cfg)
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


def collect_reviewed(cfg: LoopConfig, dest: Path) -> int:
    """Merge the API feedback folder and complete intake batches into one pair folder."""
    from semlayout.data.pairs import PairArrays, read_gray8, read_manifest, write_pair_folder

    sources: list[tuple[str, Path]] = []
    if cfg.feedback_dir and (Path(cfg.feedback_dir) / "manifest.csv").is_file():
        sources.append(("feedback", Path(cfg.feedback_dir)))
    tmp_intake = dest.parent / f".{dest.name}-intake"
    if cfg.intake_uri:
        from semlayout.intake import download_batches

        shutil.rmtree(tmp_intake, ignore_errors=True)
        got = download_batches(cfg.intake_uri, tmp_intake)
        if (Path(got) / "manifest.csv").is_file():
            sources.append(("intake", Path(got)))

    def pairs():
        seen: set[str] = set()
        for tag, folder in sources:
            for rec in read_manifest(folder):
                pid = rec.id if rec.id not in seen else f"{tag}-{rec.id}"
                seen.add(pid)
                yield PairArrays(id=pid, sem=read_gray8(rec.sem_path), layout=read_gray8(rec.layout_path),
                                 pattern_type=rec.pattern_type, extra={"source": tag})

    try:
        ids = write_pair_folder(dest, pairs()) if sources else []
    except SemlayoutError as err:
        if "no pairs listed" in str(err):
            ids = []
        else:
            raise
    finally:
        shutil.rmtree(tmp_intake, ignore_errors=True)
    return len(ids)


def _log_to_mlflow(cfg: LoopConfig, decision: TriggerDecision, outcome: dict[str, Any]) -> str | None:
    tracking = cfg.tracking_uri
    if not tracking:
        import os

        tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking:
        return None
    import mlflow

    from semlayout.registry.tracking import (
        _experiment_id,
        check_tracking_uri,
        client,
        use_tracking_uri,
    )

    uri = check_tracking_uri(tracking, create=True)
    # the experiment keeps its artifacts beside a SQLite registry (not ./mlruns in the cwd), and the
    # tracking URI is scoped to this block instead of being left set process-wide
    exp_id = _experiment_id(client(uri), "semlayout-loop", uri)
    with use_tracking_uri(uri), mlflow.start_run(
            experiment_id=exp_id, run_name=f"loop-{decision.checked_at:%Y%m%dT%H%M%S}") as run:
        mlflow.set_tags({"semlayout.loop.fired": str(decision.fire),
                         "semlayout.loop.status": outcome.get("status", ""),
                         "semlayout.loop.reasons": "; ".join(r.name for r in decision.fired_reasons)})
        for r in decision.reasons:
            if isinstance(r.value, int | float):
                mlflow.log_metric(f"trigger.{r.name}", float(r.value))
        mlflow.log_dict({"decision": decision.to_dict(), "outcome": outcome}, "loop_decision.json")
        return str(run.info.run_id)


def run(cfg: LoopConfig, launcher: Launcher, now: datetime | None = None,
        force: bool = False) -> dict[str, Any]:
    """Check, and when the policy fires (or `force`), launch the fine-tune pipeline once."""
    store = _store(cfg)
    obs = observe(cfg, store)
    decision = decide(cfg.policy, obs, now or datetime.now(UTC))
    outcome: dict[str, Any] = {"decision": decision.to_dict(), "status": "not_triggered"}
    if not (decision.fire or (force and not decision.held_by_cooldown)):
        if decision.held_by_cooldown:
            outcome["status"] = "held_by_cooldown"
        store.record_trigger_decision(False, outcome)
        return outcome

    run_dir = Path(cfg.workdir) / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}-{int(time.time() * 1000) % 1000:03d}"
    run_dir.mkdir(parents=True, exist_ok=True)
    reviewed = run_dir / "reviewed"
    n = collect_reviewed(cfg, reviewed)
    outcome["n_reviewed"] = n
    if n == 0:
        outcome["status"] = "no_reviewed_pairs"
        outcome["message"] = "the trigger fired but there are no reviewed pairs to fine-tune on; stopped"
        store.record_trigger_decision(False, outcome)
        outcome["mlflow_run_id"] = _log_to_mlflow(cfg, decision, outcome)
        return outcome

    t0 = time.perf_counter()
    try:
        result = launcher(LaunchRequest(reviewed_dir=reviewed, n_reviewed=n, cfg=cfg, run_dir=run_dir))
    except SemlayoutError as err:
        outcome.update(status="failed", message=str(err), seconds=round(time.perf_counter() - t0, 1))
        store.record_trigger_decision(False, outcome)
        outcome["mlflow_run_id"] = _log_to_mlflow(cfg, decision, outcome)
        return outcome
    outcome.update(
        status="launched" if result.gate_passed is None else ("registered" if result.gate_passed else "gate_failed"),
        run_id=result.run_id, gate_passed=result.gate_passed, model_version=result.model_version,
        gate_reasons=result.gate_reasons, seconds=round(time.perf_counter() - t0, 1), **result.details,
    )
    store.record_trigger_decision(True, outcome, run_id=result.run_id)
    outcome["mlflow_run_id"] = _log_to_mlflow(cfg, decision, outcome)
    (run_dir / "outcome.json").write_text(json.dumps(outcome, indent=2, default=str))
    return outcome
