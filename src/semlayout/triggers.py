"""When to fine-tune: the trigger policy of the continuous-learning loop.

Independent reasons can fire a fine-tune run, each with its numbers:
- enough new reviewed pairs (API feedback + S3 intake batches that no completed run has used yet),
- a drift rate over the recent traffic window above a threshold,
- a rolling reviewed SSIM (ground truth that arrived later) below the promotion baseline
  by more than a margin,
- `low_confidence_rate`: the share of recent predictions the model itself is unsure of (issue
  17: confidence below `low_confidence` by the version's calibration) above a threshold,
- `population_drift`: the two-sample test of the recent stream against the reference fired
  for some cohort (`semlayout.monitoring.population`).
A cooldown holds any firing for a while after the last run, so one burst of drifted
traffic or feedback does not start many runs. `decide` is pure: observations in,
decision out; gathering observations and acting on the decision live in `semlayout.continual`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from semlayout.directions import DIRECTIONS


class TriggerPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_new_pairs: int = Field(default=50, ge=1, description="reviewed pairs no run has used yet")
    drift_rate_threshold: float = Field(
        default=0.3, gt=0, le=1, description="share of drifted requests"
    )
    drift_window: int = Field(default=200, ge=1, description="most recent requests considered")
    min_drift_samples: int = Field(
        default=20, ge=1, description="fewer requests than this: no drift verdict"
    )
    ssim_drop_margin: float = Field(
        default=0.05, ge=0, description="rolling SSIM below baseline - margin fires"
    )
    ssim_window: int = Field(
        default=50, ge=1, description="most recent ground-truth evaluations considered"
    )
    min_ssim_samples: int = Field(default=5, ge=1)
    cooldown_minutes: float = Field(
        default=24 * 60, ge=0, description="no new run this soon after the last"
    )
    low_confidence: float = Field(
        default=0.5, gt=0, le=1, description="a prediction below this confidence is unsure"
    )
    low_confidence_rate_threshold: float = Field(
        default=0.3, gt=0, le=1, description="share of unsure predictions that fires"
    )
    low_confidence_window: int = Field(default=200, ge=1)
    min_confidence_samples: int = Field(default=20, ge=1)
    population_alpha: float = Field(
        default=0.01, gt=0, lt=1, description="two-sample test p-value below which it fires"
    )
    population_window: int = Field(default=100, ge=10)
    min_population_samples: int = Field(default=30, ge=10)


@dataclass
class Observations:
    """What the monitors and the intake bucket say right now."""

    new_pairs_feedback: int = 0
    new_pairs_intake: int = 0
    drift_rate: float | None = None
    drift_samples: int = 0
    rolling_ssim: dict[str, float] = field(default_factory=dict)
    ssim_samples: dict[str, int] = field(default_factory=dict)
    baseline_ssim: dict[str, float] = field(default_factory=dict)
    last_run_at: datetime | None = None
    low_confidence_rate: float | None = None
    confidence_samples: int = 0
    # per direction and cohort: {"cohort", "n", "p_value", "drifted", "detail", ...}
    population: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Reason:
    name: str
    fired: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass
class TriggerDecision:
    fire: bool
    held_by_cooldown: bool
    reasons: list[Reason]
    checked_at: datetime
    cooldown_until: datetime | None

    @property
    def fired_reasons(self) -> list[Reason]:
        return [r for r in self.reasons if r.fired]

    def to_dict(self) -> dict[str, Any]:
        return {
            "fire": self.fire,
            "held_by_cooldown": self.held_by_cooldown,
            "checked_at": self.checked_at.isoformat(),
            "cooldown_until": self.cooldown_until.isoformat() if self.cooldown_until else None,
            "reasons": [asdict(r) for r in self.reasons],
        }

    def summary(self) -> str:
        if self.fire:
            verdict = "FIRE"
        elif self.held_by_cooldown:
            verdict = f"HELD by cooldown until {self.cooldown_until:%Y-%m-%d %H:%M:%S}"
        else:
            verdict = "no trigger"
        lines = [f"decision: {verdict}"]
        lines += [f"  [{'x' if r.fired else ' '}] {r.name}: {r.detail}" for r in self.reasons]
        return "\n".join(lines)


def _new_pairs_reason(policy: TriggerPolicy, obs: Observations) -> Reason:
    pairs = obs.new_pairs_feedback + obs.new_pairs_intake
    return Reason(
        name="new_pairs",
        fired=pairs >= policy.min_new_pairs,
        value=float(pairs),
        threshold=float(policy.min_new_pairs),
        detail=(
            f"{pairs} new reviewed pairs ({obs.new_pairs_feedback} via API feedback, "
            f"{obs.new_pairs_intake} via S3 intake); threshold {policy.min_new_pairs}"
        ),
    )


def _drift_reason(policy: TriggerPolicy, obs: Observations) -> Reason:
    if obs.drift_rate is None or obs.drift_samples < policy.min_drift_samples:
        return Reason(
            name="drift",
            fired=False,
            value=obs.drift_rate,
            threshold=policy.drift_rate_threshold,
            detail=(
                f"only {obs.drift_samples} requests in the window "
                f"(need {policy.min_drift_samples}); no verdict"
            ),
        )
    return Reason(
        name="drift",
        fired=obs.drift_rate > policy.drift_rate_threshold,
        value=obs.drift_rate,
        threshold=policy.drift_rate_threshold,
        detail=(
            f"drift rate {obs.drift_rate:.1%} over the last {obs.drift_samples} requests; "
            f"threshold {policy.drift_rate_threshold:.1%}"
        ),
    )


def _ssim_drop_reason(policy: TriggerPolicy, obs: Observations, direction: str) -> Reason:
    name = f"ssim_drop_{direction}"
    ssim = obs.rolling_ssim.get(direction)
    n = obs.ssim_samples.get(direction, 0)
    base = obs.baseline_ssim.get(direction)
    if ssim is None or base is None or n < policy.min_ssim_samples:
        why = (
            "no promotion baseline"
            if base is None
            else (f"only {n} ground-truth evaluations (need {policy.min_ssim_samples})")
        )
        return Reason(
            name=name, fired=False, value=ssim, threshold=None, detail=f"{why}; no verdict"
        )
    limit = base - policy.ssim_drop_margin
    return Reason(
        name=name,
        fired=ssim < limit,
        value=ssim,
        threshold=limit,
        detail=(
            f"rolling SSIM {ssim:.3f} over {n} reviewed predictions vs baseline "
            f"{base:.3f} - margin {policy.ssim_drop_margin:.3f} = {limit:.3f}"
        ),
    )


def _low_confidence_reason(policy: TriggerPolicy, obs: Observations) -> Reason:
    rate, n = obs.low_confidence_rate, obs.confidence_samples
    if rate is None or n < policy.min_confidence_samples:
        return Reason(
            name="low_confidence_rate",
            fired=False,
            value=rate,
            threshold=policy.low_confidence_rate_threshold,
            detail=(
                f"only {n} predictions with a known confidence "
                f"(need {policy.min_confidence_samples}); no verdict"
            ),
        )
    return Reason(
        name="low_confidence_rate",
        fired=rate > policy.low_confidence_rate_threshold,
        value=rate,
        threshold=policy.low_confidence_rate_threshold,
        detail=(
            f"{rate:.1%} of the last {n} predictions below confidence "
            f"{policy.low_confidence:.2f}; threshold {policy.low_confidence_rate_threshold:.1%}"
        ),
    )


def _population_reason(policy: TriggerPolicy, obs: Observations) -> Reason:
    judged = [r for r in obs.population if r.get("p_value") is not None]
    if not judged:
        return Reason(
            name="population_drift",
            fired=False,
            value=None,
            threshold=policy.population_alpha,
            detail="no cohort with enough requests for a two-sample test; no verdict",
        )
    worst = min(judged, key=lambda r: r["p_value"])
    fired = [r for r in judged if r["p_value"] < policy.population_alpha]
    names = ", ".join(f"{r['direction']}/{r['cohort']}" for r in fired) or "none"
    return Reason(
        name="population_drift",
        fired=bool(fired),
        value=float(worst["p_value"]),
        threshold=policy.population_alpha,
        detail=(
            f"smallest p {worst['p_value']:.4f} ({worst['direction']}/{worst['cohort']}, "
            f"{worst['n']} requests); fired for: {names}; alpha {policy.population_alpha}"
        ),
    )


def decide(policy: TriggerPolicy, obs: Observations, now: datetime) -> TriggerDecision:
    """Evaluate every trigger, then apply the cooldown to the verdict."""
    reasons = [
        _new_pairs_reason(policy, obs),
        _drift_reason(policy, obs),
        *(_ssim_drop_reason(policy, obs, d) for d in DIRECTIONS),
        _low_confidence_reason(policy, obs),
        _population_reason(policy, obs),
    ]
    any_fired = any(r.fired for r in reasons)
    cooldown_until = None
    held = False
    if obs.last_run_at is not None:
        cooldown_until = obs.last_run_at + timedelta(minutes=policy.cooldown_minutes)
        if now < cooldown_until:
            held = any_fired
        else:
            cooldown_until = None
    return TriggerDecision(
        fire=any_fired and not held,
        held_by_cooldown=held,
        reasons=reasons,
        checked_at=now,
        cooldown_until=cooldown_until,
    )
