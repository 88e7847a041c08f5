"""The promotion gate: is a candidate good enough to become the `challenger`?

Judged per direction on one metric (SSIM by default), from the dict that
`semlayout.evaluation.evaluate_model` returns (`metrics[direction]["ssim"]`):

- training gate (`judge`): metric >= floor AND, when a champion exists,
  metric >= champion - tolerance;
- fine-tune gate (`judge_finetune`): better than the champion on the new
  pairs' test split AND no more than `tolerance` worse on the original test shard.

A gate fails closed: a missing or non-finite metric is a failing reason, not a pass.
Every reason is a sentence with the numbers, so a release manager can read the
verdict without opening the metrics.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from semlayout.directions import DIRECTIONS
from semlayout.errors import validation_error

# Floors from baselines measured on synthetic test splits (not guessed):
# - SEM->Layout: the Otsu threshold of the blurred SEM (semlayout.evaluation's baseline) scores
#   SSIM 0.49 (IoU 0.70) on a 120-pair synth test split; a model must clearly beat it -> 0.60.
# - Layout->SEM is judged against the *noisy* SEM: its ceiling SSIM(clean, noisy) is 0.45-0.53,
#   a constant mean-grey image already scores 0.24 and an intensity-matched blurred layout 0.36
#   (oracle polarity). The floor asks for more than the constant predictor -> 0.25; reports
#   state the ceiling beside the score.
DEFAULT_FLOORS = {"sem2layout": 0.60, "layout2sem": 0.25}
# allowed SSIM loss against the champion (promotion) or on the original test shard (fine-tune)
DEFAULT_TOLERANCE = 0.01


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    floors: dict[str, float] = Field(
        description="per direction: the lowest acceptable metric value "
        "(set from measured baselines)"
    )
    tolerance: float = Field(
        DEFAULT_TOLERANCE, ge=0, description="allowed loss against the champion"
    )
    metric: str = "ssim"
    min_improvement: float = Field(
        0.0, ge=0, description="fine-tune gate: required gain over the champion on the new pairs"
    )
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="fine-tune gate on per-pair scores: how sure (paired bootstrap) the gain "
        "exceeds min_improvement and the loss on the original shard stays within tolerance",
    )
    bootstrap: int = Field(2000, ge=200, description="bootstrap resamples of the pairs")
    paired_metric: dict[str, str] = Field(
        default_factory=lambda: {"layout2sem": "ssim_lowpass"},
        description="fine-tune gate on per-pair scores: per direction, the metric the paired "
        "comparisons use instead of `metric` when both evaluations carry it (Layout->SEM: SSIM "
        "after a low-pass, `metrics.ssim_lowpass`: reviewed SEMs are noisy, and the plain SSIM "
        "against them ranks predictions by how well they imitate the noise); the floors stay on "
        "`metric`",
    )
    gain_in: Literal["every", "any"] = Field(
        "any",
        description="fine-tune gate on per-pair scores: the new pairs must gain in every "
        "direction, or in at least one with the others not worse than `tolerance` (Layout->SEM "
        "against a low-dose SEM barely moves SSIM even when the clean prediction improves)",
    )

    @field_validator("floors")
    @classmethod
    def _known_directions(cls, floors: dict[str, float]) -> dict[str, float]:
        if not floors:
            raise ValueError("floors must name at least one direction")
        unknown = sorted(set(floors) - set(DIRECTIONS))
        if unknown:
            raise ValueError(
                f"unknown direction(s) {unknown}; expected {list(map(str, DIRECTIONS))}"
            )
        return floors


def gate_config(**kwargs: Any) -> GateConfig:
    """Build a `GateConfig`, turning validation errors into a one-line `SemlayoutError`."""
    try:
        return GateConfig(**kwargs)
    except ValidationError as err:
        raise validation_error(err, "gate config") from None


class GateResult(BaseModel):
    passed: bool
    reasons: list[str]
    judged: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def confidence(self) -> float | None:
        """How sure a paired fine-tune verdict is: the smallest bootstrap probability behind it
        — the surest gain on the new pairs, each direction's condition there (gain, or not
        worse), each direction kept on the original shard; None for verdicts not judged pair
        by pair."""
        entries = [e for e in self.judged.values() if isinstance(e, dict) and e.get("paired")]
        if not entries:
            return None
        probs = [max(float(e["p_improved"]) for e in entries)]
        for e in entries:
            probs.append(float(e["p_improved"] if e["improved"] else e["p_not_worse"]))
            probs.append(float(e["p_kept"]))
        return min(probs)

    @classmethod
    def from_json(cls, text: str) -> GateResult:
        return cls.model_validate(json.loads(text))


def _value(metrics: dict[str, Any] | None, direction: str, metric: str) -> float | None:
    """metrics[direction][metric] as a finite float, or None when absent / NaN / not a number."""
    if not metrics:
        return None
    block = metrics.get(direction)
    if not isinstance(block, dict):
        return None
    v = block.get(metric)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _ceiling_note(metrics: dict[str, Any], direction: str, metric: str) -> str:
    # layout->SEM against a noisy SEM is capped by SSIM(clean, noisy); state it beside the score.
    block = metrics.get(direction)
    ceiling = block.get("ceiling") if isinstance(block, dict) else None
    if isinstance(ceiling, dict) and isinstance(ceiling.get(metric), numbers.Real):
        return f" (ceiling for this data: {float(ceiling[metric]):.4f})"
    return ""


def judge(
    metrics: dict[str, Any], champion_metrics: dict[str, Any] | None, cfg: GateConfig
) -> GateResult:
    """Per direction: metric >= floor AND (no champion OR metric >= champion - tolerance)."""
    m, tol = cfg.metric, cfg.tolerance
    reasons: list[str] = []
    judged: dict[str, Any] = {"kind": "train", "metric": m, "tolerance": tol}
    all_ok = True
    for direction, floor in cfg.floors.items():
        value = _value(metrics, direction, m)
        champ = _value(champion_metrics, direction, m)
        entry: dict[str, Any] = {"value": value, "floor": floor, "champion": champ}
        if value is None:
            ok = False
            reasons.append(
                f"{direction}: no finite {m} in the candidate's metrics, so the gate fails."
            )
        else:
            note = _ceiling_note(metrics, direction, m)
            floor_ok = value >= floor
            reasons.append(
                f"{direction}: {m} {value:.4f} is {'at or above' if floor_ok else 'below'} "
                f"the floor {floor:.4f}{note}."
            )
            champ_ok = True
            if champ is not None:
                needed = champ - tol
                champ_ok = value >= needed
                reasons.append(
                    f"{direction}: {m} {value:.4f} vs champion {champ:.4f} "
                    f"({value - champ:+.4f}; tolerance {tol:.4f}, "
                    f"so at least {needed:.4f} is needed): "
                    f"{'kept' if champ_ok else 'worse than the champion'}."
                )
            elif champion_metrics is not None:
                reasons.append(
                    f"{direction}: the champion has no {m} for this direction; "
                    "judged on the floor only."
                )
            ok = floor_ok and champ_ok
        entry["passed"] = ok
        judged[direction] = entry
        all_ok = all_ok and ok
    reasons.append("Gate passed." if all_ok else "Gate failed.")
    return GateResult(passed=all_ok, reasons=reasons, judged=judged)


def paired_bootstrap(
    candidate: list[float], champion: list[float], resamples: int, seed: int = 0
) -> dict[str, Any] | None:
    """Mean of the per-pair differences candidate - champion (pairs where both are finite),
    its 95 % bootstrap interval and the bootstrap means (resampling pairs, seeded: the same
    scores give the same answer). None when fewer than 2 pairs were scored."""
    d = np.array([c - b for c, b in zip(candidate, champion, strict=True) if math.isfinite(c - b)])
    if d.size < 2:
        return None
    rng = np.random.default_rng([seed, d.size])
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"n": int(d.size), "delta": float(d.mean()), "ci95": [float(lo), float(hi)],
            "means": means}  # fmt: skip


def _per_pair(metrics: dict[str, Any], direction: str, metric: str) -> list[float] | None:
    values = ((metrics.get("per_pair") or {}).get(direction) or {}).get(metric)
    return [float(v) for v in values] if isinstance(values, list) else None


def _paired(
    cand: dict[str, Any], champ: dict[str, Any], direction: str, cfg: GateConfig
) -> dict[str, Any] | None:
    """The paired bootstrap of one direction when both evaluations carry per-pair scores of
    the same pairs, else None (the gate then compares means)."""
    metric = paired_metric(cand, champ, direction, cfg)
    a, b = _per_pair(cand, direction, metric), _per_pair(champ, direction, metric)
    ids_a, ids_b = (m.get("per_pair", {}).get("ids") for m in (cand, champ))
    if a is None or b is None or ids_a != ids_b:
        return None
    boot = paired_bootstrap(a, b, cfg.bootstrap)
    return None if boot is None else {**boot, "metric": metric}


def paired_metric(
    cand: dict[str, Any], champ: dict[str, Any], direction: str, cfg: GateConfig
) -> str:
    """The per-pair metric the paired comparison of `direction` uses: `cfg.paired_metric`'s
    when both evaluations carry it (an evaluation made before it existed does not), else
    `cfg.metric`."""
    want = cfg.paired_metric.get(direction, cfg.metric)
    if all(_per_pair(m, direction, want) is not None for m in (cand, champ)):
        return want
    return cfg.metric


def _sure(p: float, cfg: GateConfig) -> str:
    return f"P = {p:.3f} {'>=' if p >= cfg.confidence else '<'} {cfg.confidence:g}"


def _judge_paired(
    direction: str, new: dict[str, Any], orig: dict[str, Any], cfg: GateConfig, floor: float,
    orig_mean: float,
) -> tuple[bool, list[str], dict[str, Any]]:  # fmt: skip
    """On the new pairs: improved (or, with gain_in="any", not worse); on the original shard:
    kept within tolerance — each with probability `cfg.confidence`."""
    m, tol, gain, conf = new["metric"], cfg.tolerance, cfg.min_improvement, cfg.confidence
    p_gain = float((new["means"] > gain).mean())
    p_same = float((new["means"] >= -tol).mean())
    p_kept = float((orig["means"] >= -tol).mean())
    improved, kept, floor_ok = p_gain >= conf, p_kept >= conf, orig_mean >= floor
    not_worse = improved or p_same >= conf
    on_new = "improved" if improved else "no sure improvement"
    if not improved and cfg.gain_in == "any":
        on_new += f"; P(loss <= {tol:.4f}) {_sure(p_same, cfg)}: " + (
            "not worse" if not_worse else "may be worse"
        )
    (lo, hi), (olo, ohi) = new["ci95"], orig["ci95"]
    reasons = [
        f"{direction}: on the {new['n']} new test pairs {m} {new['delta']:+.4f} vs champion "
        f"(95% CI {lo:+.4f}..{hi:+.4f}); P(gain > {gain:+.4f}) {_sure(p_gain, cfg)}: {on_new}.",
        f"{direction}: on the {orig['n']} original test pairs {m} {orig['delta']:+.4f} vs "
        f"champion (95% CI {olo:+.4f}..{ohi:+.4f}); P(loss <= {tol:.4f}) {_sure(p_kept, cfg)}: "
        f"{'kept' if kept else 'may lose too much'}.",
    ]
    if not floor_ok:
        reasons.append(
            f"{direction}: {cfg.metric} {orig_mean:.4f} on the original test shard is below the "
            f"floor {floor:.4f}."
        )
    entry = {
        "paired": True, "improved": improved,
        "new_delta": new["delta"], "new_ci95": new["ci95"], "new_n": new["n"],
        "p_improved": p_gain, "p_not_worse": p_same,
        "orig_delta": orig["delta"], "orig_ci95": orig["ci95"], "orig_n": orig["n"],
        "p_kept": p_kept, "metric": m,
    }  # fmt: skip
    on_new_ok = improved if cfg.gain_in == "every" else not_worse
    return on_new_ok and kept and floor_ok, reasons, entry


def judge_finetune(
    new_metrics: dict[str, Any],
    new_baseline_metrics: dict[str, Any],
    orig_metrics: dict[str, Any],
    orig_champion_metrics: dict[str, Any],
    cfg: GateConfig,
) -> GateResult:
    """A fine-tuned model passes when, for every direction in `cfg.floors`:

    - on the new pairs' test split it beats the champion by more than `min_improvement`
      (`new_metrics` vs `new_baseline_metrics`, the champion evaluated on the same split), and
    - on the original test shard it loses no more than `tolerance` against the champion
      (`orig_metrics` vs `orig_champion_metrics`) and stays at or above the floor.

    When the evaluations carry per-pair scores of the same pairs (`evaluate_model(...,
    per_pair=True)`), both conditions are judged on the paired differences with a bootstrap:
    each must hold with probability `cfg.confidence`, and the verdict states the interval and
    the probability. With `cfg.gain_in == "any"` (the default) one direction must gain surely
    and the others must surely lose no more than `tolerance` on the new pairs. Without per-pair
    scores the means are compared (no noise margin, a gain in every direction).
    """
    m, tol, gain = cfg.metric, cfg.tolerance, cfg.min_improvement
    reasons: list[str] = []
    judged: dict[str, Any] = {
        "kind": "finetune",
        "metric": m,
        "tolerance": tol,
        "min_improvement": gain,
        "confidence": cfg.confidence,
    }
    all_ok = True
    for direction, floor in cfg.floors.items():
        new = _value(new_metrics, direction, m)
        base = _value(new_baseline_metrics, direction, m)
        orig = _value(orig_metrics, direction, m)
        champ = _value(orig_champion_metrics, direction, m)
        entry: dict[str, Any] = {
            "new": new,
            "new_champion": base,
            "orig": orig,
            "orig_champion": champ,
            "floor": floor,
        }
        missing = [
            n
            for n, v in (
                ("new pairs (candidate)", new),
                ("new pairs (champion)", base),
                ("original shard (candidate)", orig),
                ("original shard (champion)", champ),
            )
            if v is None
        ]
        if missing:
            ok = False
            reasons.append(
                f"{direction}: no finite {m} for {', '.join(missing)}, so the gate fails."
            )
        elif (pn := _paired(new_metrics, new_baseline_metrics, direction, cfg)) and (
            po := _paired(orig_metrics, orig_champion_metrics, direction, cfg)
        ):
            assert orig is not None
            ok, more, extra = _judge_paired(direction, pn, po, cfg, floor, orig)
            reasons += more
            entry.update(extra)
        else:
            assert new is not None and base is not None and orig is not None and champ is not None
            improved = new - base > gain
            reasons.append(
                f"{direction}: on the new pairs {m} {new:.4f} vs champion {base:.4f} "
                f"({new - base:+.4f}; more than {gain:+.4f} needed): "
                f"{'improved' if improved else 'no improvement'}."
            )
            kept = orig >= champ - tol
            reasons.append(
                f"{direction}: on the original test shard {m} {orig:.4f} vs champion {champ:.4f} "
                f"({orig - champ:+.4f}; tolerance {tol:.4f}): "
                f"{'kept' if kept else 'lost too much'}."
            )
            floor_ok = orig >= floor
            if not floor_ok:
                reasons.append(
                    f"{direction}: {m} {orig:.4f} on the original test shard "
                    f"is below the floor {floor:.4f}."
                )
            ok = improved and kept and floor_ok
        entry["passed"] = ok
        judged[direction] = entry
        all_ok = all_ok and ok
    paired = [e for e in judged.values() if isinstance(e, dict) and e.get("paired")]
    if all_ok and paired and not any(e["improved"] for e in paired):
        all_ok = False
        reasons.append("No direction improved surely on the new pairs.")
    reasons.append("Fine-tune gate passed." if all_ok else "Fine-tune gate failed.")
    return GateResult(passed=all_ok, reasons=reasons, judged=judged)
