"""Judging a fine-tuned model against the champion it started from, pair by pair.

Both models are scored on the same two sets — the reviewed pairs' test split (did it learn the
new tool or layer?) and the original test shard (did it forget?) — with per-pair scores, so
`semlayout.gate.judge_finetune` compares paired differences with a bootstrap and says how sure
it is. Used by the fine-tune pipeline's evaluate step and by bench/bench_adaptation.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semlayout.gate import GateConfig, GateResult, gate_config, judge_finetune


def evaluate_pair_of_models(
    candidate: Path,
    champion: Path,
    new_shards: Path,
    original_shards: Path,
    n_samples: int = 4,
    profile: str | None = None,
) -> dict[str, dict[str, Any]]:
    """{"new", "new_champion", "orig", "orig_champion"}: `evaluate_model` results with per-pair
    scores (report samples only in "new"). `profile`: the tool / layer profile the reviewed
    pairs come from (a profile fine-tune's): both models translate the new pairs with it, as
    the server would answer that layer (a model that never learned it: its shared network);
    the original shard always with the shared network."""
    from semlayout.evaluation import evaluate_model
    from semlayout.inference import Translator

    def on_new(model: Path) -> Any:
        return Translator.load(model, profile=profile) if profile else model

    out: dict[str, dict[str, Any]] = {}
    for key, model, shards in (
        ("new", on_new(candidate), new_shards),
        ("new_champion", on_new(champion), new_shards),
        ("orig", candidate, original_shards),
        ("orig_champion", champion, original_shards),
    ):
        out[key] = evaluate_model(
            model, shards, split="test", per_pair=True,
            n_report_samples=n_samples if key == "new" else 0,
        )  # fmt: skip
    return out


def judge_evaluations(evals: dict[str, dict[str, Any]], cfg: GateConfig) -> GateResult:
    return judge_finetune(
        evals["new"], evals["new_champion"], evals["orig"], evals["orig_champion"], cfg
    )


def judge_reviewed(
    candidate: Path,
    champion: Path,
    new_shards: Path,
    original_shards: Path,
    cfg: GateConfig | None = None,
) -> GateResult:
    """Evaluate both models on both sets and judge (default gate: `DEFAULT_FLOORS`)."""
    from semlayout.gate import DEFAULT_FLOORS

    cfg = cfg or gate_config(floors=dict(DEFAULT_FLOORS))
    evals = evaluate_pair_of_models(candidate, champion, new_shards, original_shards, 0)
    return judge_evaluations(evals, cfg)
