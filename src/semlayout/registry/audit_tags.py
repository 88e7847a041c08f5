"""What the registry writes into MLflow tags, and how it reads them back (no MLflow calls here).

Aliases replace MLflow's old stages:
- `challenger`        the newest version that passed the gate (set by `Registry.register`);
- `champion`          the version serving traffic (moved only by `approve` / `rollback`);
- `previous-champion` what `rollback` returns to.

Each version carries an `audit_log` tag (a JSON list of events); the registered model carries
the same events (newest kept when the list outgrows a tag) and `champion_history` (JSON list of
versions that were champion, in order).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
from typing import Any

from semlayout.errors import SemlayoutError
from semlayout.registry.profile_tags import read_adaptation
from semlayout.registry.run_logging import flatten_numbers

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous-champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
AUDIT_TAG = "audit_log"
HISTORY_TAG = "champion_history"
# registered-model tag values are VARCHAR(5000) in MLflow's SQL schema
MODEL_TAG_LIMIT = 5000
DECISION_TAGS = (
    "approved_by",
    "approved_at",
    "approval_reason",
    "rejected_by",
    "rejected_at",
    "rejection_reason",
    "rolled_back_by",
    "rolled_back_at",
    "rollback_reason",
)


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def to_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def require(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SemlayoutError(f"{what} is required (got an empty value)")
    return value.strip()


def version_str(version: int | str) -> str:
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise SemlayoutError(f"model version '{version}' is not valid: expected a positive integer")
    return str(int(text))


def read_list(tags: dict[str, str], key: str) -> list[Any]:
    try:
        value = json.loads(tags.get(key, "[]"))
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def fit_list(items: list[Any], limit: int) -> str:
    """JSON for the newest items of `items` that fit in `limit` characters."""
    keep = list(items)
    text = to_json(keep)
    while len(text) > limit and len(keep) > 1:
        keep = keep[1:]
        text = to_json(keep)
    return text


def git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0:
            return out.stdout.strip() or None
    return None


def compact_metrics(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """Top-level numbers per direction (no per-family tables): what a gate looks at."""
    if not metrics:
        return None
    out: dict[str, Any] = {}
    for key, block in metrics.items():
        if isinstance(block, dict):
            out[key] = {k: v for k, v in flatten_numbers(block).items() if "per_family" not in k}
        elif key in ("n", "split"):
            out[key] = block
    return out


def version_status(tags: dict[str, str]) -> str:
    status = "registered"
    if tags.get("rolled_back_by"):
        status = "rolled back"
    if tags.get("rejected_by"):
        status = "rejected"
    if tags.get("approved_by"):
        status = "approved" if not tags.get("rolled_back_by") else "rolled back"
    return status


def version_summary(mv: Any, aliases: dict[str, str]) -> dict[str, Any]:
    """One version as `semlayout registry show` prints it (`mv`: an MLflow ModelVersion)."""
    tags = dict(mv.tags or {})
    gate = None
    with contextlib.suppress(Exception):
        gate = json.loads(tags["gate_result"])
    return {
        "version": int(mv.version),
        "aliases": sorted(a for a, v in aliases.items() if v == str(mv.version)),
        "status": version_status(tags),
        "run_id": mv.run_id,
        "created": tags.get("registered_at"),
        "gate_passed": {"true": True, "false": False}.get(tags.get("gate_passed", "")),
        "gate": gate,
        "lineage": {k[len("lineage.") :]: v for k, v in tags.items() if k.startswith("lineage.")},
        "decision": {k: tags[k] for k in DECISION_TAGS if k in tags},
        "audit_log": read_list(tags, AUDIT_TAG),
        "adaptation": read_adaptation(tags),
    }


COMPARISON_TAG = "comparison"  # runs:/<run>/comparison/vB-vs-vA.html
COMPARISON_AGAINST_TAG = "comparison_against"  # the version it was compared with


def version_description(version: int | str, tags: dict[str, str]) -> str:
    """The model version's description as MLflow shows it (Markdown): verdict, data, the
    comparison page, the audit trail, and how decisions are made."""
    gate = None
    with contextlib.suppress(Exception):
        gate = json.loads(tags["gate_result"])
    verdict = {"true": "passed", "false": "FAILED"}.get(tags.get("gate_passed", ""), "unknown")
    lines = [
        f"**semlayout version {version}** · status {version_status(tags)} · gate {verdict}",
        "",
    ]
    for reason in (gate or {}).get("reasons", [])[:-1]:
        lines.append(f"- {reason}")
    data = tags.get("lineage.data_uri")
    if data:
        sha = (tags.get("lineage.data_sha256") or "")[:12]
        config, code = tags.get("lineage.config", "?"), tags.get("lineage.git_commit", "?")[:10]
        lines += ["", f"Trained on `{data}` (sha256 {sha or '?'}), config `{config}`, code {code}."]
    if tags.get(COMPARISON_TAG):
        against = tags.get(COMPARISON_AGAINST_TAG, "?")
        lines += ["", f"Compared with v{against} on the same pairs: `{tags[COMPARISON_TAG]}`."]
    log = read_list(tags, AUDIT_TAG)
    if log:
        lines += ["", "Audit trail:"]
        for e in log:
            lines.append(
                f"- {e.get('at', '?')} **{e.get('action', '?')}** v{e.get('version')} by "
                f"{e.get('by', '?')}: {e.get('reason', '')}"
            )
    lines += [
        "",
        "Promote, reject and roll back with `semlayout registry approve | reject | rollback`: "
        "the MLflow UI's alias editor skips the gate check and the audit trail.",
    ]
    return "\n".join(lines)
