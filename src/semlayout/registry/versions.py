"""Model versions, aliases and the release manager's decisions.

Aliases replace MLflow's old stages:
- `challenger`        the newest version that passed the gate (set by `register_version`);
- `champion`          the version serving traffic (moved only by `approve` / `rollback`);
- `previous-champion` what `rollback` returns to.

Every decision writes its tags first and moves aliases after, so an alias never points at a
version without the tags that explain why. Each version carries an `audit_log` tag (a JSON
list of events); the registered model carries the same events (newest kept when the list
outgrows a tag) and `champion_history` (JSON list of versions that were champion, in order).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from semlayout.errors import SemlayoutError
from semlayout.gate import GateResult
from semlayout.registry.tracking import (
    MODEL_NAME_IN_RUN,
    TAG_CONFIG_HASH,
    TAG_MODEL_URI,
    check_tracking_uri,
    client,
    flatten_numbers,
    mlflow_errors,
    registry_missing,
    use_tracking_uri,
)

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous-champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
AUDIT_TAG = "audit_log"
HISTORY_TAG = "champion_history"
# registered-model tag values are VARCHAR(5000) in MLflow's SQL schema
MODEL_TAG_LIMIT = 5000


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _require(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SemlayoutError(f"{what} is required (got an empty value)")
    return value.strip()


def _version_str(version: int | str) -> str:
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise SemlayoutError(f"model version '{version}' is not valid: expected a positive integer")
    return str(int(text))


def _get_model(c: Any, name: str) -> Any:
    with mlflow_errors(f"registered model '{name}'"):
        return c.get_registered_model(name)


def _get_version(c: Any, name: str, version: int | str) -> Any:
    v = _version_str(version)
    _get_model(c, name)
    with mlflow_errors(f"model '{name}' version {v}"):
        return c.get_model_version(name, v)


def _alias_version(c: Any, name: str, alias: str) -> str | None:
    model = _get_model(c, name)
    aliases = getattr(model, "aliases", None) or {}
    v = aliases.get(alias)
    return str(v) if v is not None else None


def _read_list(tags: dict[str, str], key: str) -> list[Any]:
    try:
        value = json.loads(tags.get(key, "[]"))
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def _fit_list(items: list[Any], limit: int) -> str:
    """JSON for the newest items of `items` that fit in `limit` characters."""
    keep = list(items)
    text = _json(keep)
    while len(text) > limit and len(keep) > 1:
        keep = keep[1:]
        text = _json(keep)
    return text


def _audit(c: Any, name: str, versions: list[str], event: dict[str, Any]) -> None:
    """Append `event` to the audit log of each version in `versions` and of the model."""
    event = {"at": _now(), **event}
    for v in versions:
        mv = c.get_model_version(name, v)
        log = _read_list(mv.tags or {}, AUDIT_TAG) + [event]
        c.set_model_version_tag(name, v, AUDIT_TAG, _json(log))
    model = c.get_registered_model(name)
    log = _read_list(model.tags or {}, AUDIT_TAG) + [event]
    c.set_registered_model_tag(name, AUDIT_TAG, _fit_list(log, MODEL_TAG_LIMIT))


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0:
            return out.stdout.strip() or None
    return None


def _compact_metrics(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
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


# --------------------------------------------------------------------------- registration
def register_version(
    tracking_uri: str | None,
    name: str,
    run_id: str,
    gate: GateResult,
    lineage: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> int:
    """Register the run's pyfunc model as a new version of `name`; returns the version number.

    Tags set at creation: `lineage.<key>` for every `lineage` item (data URI and content
    hash, pipeline run id, ...; `config_hash` and `git_commit` are filled in when absent),
    `gate_passed`, `gate_result` (the GateResult JSON) and `gate_metrics` (the metrics it was
    judged on: `metrics` if given, else the run's `metrics.json`). The alias `challenger`
    moves to the new version only if the gate passed.
    """
    name = _require(name, "model name")
    uri = check_tracking_uri(tracking_uri, create=False)
    c = client(uri)
    with mlflow_errors(f"MLflow run '{run_id}'"):
        run = c.get_run(run_id)
    model_uri = run.data.tags.get(TAG_MODEL_URI)
    if not model_uri:
        raise SemlayoutError(
            f"run {run_id} has no logged semlayout model (tag {TAG_MODEL_URI}); log it with log_training_run"
        )
    if metrics is None:
        with contextlib.suppress(Exception):
            metrics = _run_metrics(c, run_id)
    info = dict(lineage or {})
    info.setdefault("config_hash", run.data.tags.get(TAG_CONFIG_HASH, ""))
    if not info.get("git_commit"):
        info["git_commit"] = _git_commit() or "unknown"
    info.setdefault("run_id", run_id)
    tags = {f"lineage.{k}": v if isinstance(v, str) else _json(v) for k, v in info.items()}
    tags.update(
        {
            "gate_passed": "true" if gate.passed else "false",
            "gate_result": gate.to_json(),
            "gate_metrics": _json(_compact_metrics(metrics)),
            "registered_at": _now(),
        }
    )
    try:
        c.get_registered_model(name)
    except Exception:
        with mlflow_errors(f"registered model '{name}'"):
            c.create_registered_model(name, description="semlayout SEM <-> layout translator")
    model_id = model_uri[len("models:/") :] if model_uri.startswith("models:/m-") else None
    with mlflow_errors(f"registering run {run_id} as '{name}'"), use_tracking_uri(uri):
        mv = c.create_model_version(
            name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id
        )
    version = str(mv.version)
    verdict = "passed" if gate.passed else "failed"
    _audit(
        c,
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
        c.set_registered_model_alias(name, CHALLENGER, version)
        _audit(
            c,
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


# --------------------------------------------------------------------------- reading
def _run_metrics(c: Any, run_id: str) -> dict[str, Any] | None:
    """The nested metrics dict logged as `metrics.json`; None when the run has none."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="semlayout-metrics-") as tmp:
        try:
            path = c.download_artifacts(run_id, "metrics.json", tmp)
            value = json.loads(Path(path).read_text())
        except Exception:
            return None
    return value if isinstance(value, dict) else None


def _champion(tracking_uri: str | None, name: str) -> tuple[Any, str] | None:
    """(client, version) of the `champion` alias; None without a registry, model or champion."""
    if registry_missing(tracking_uri):
        return None
    c = client(check_tracking_uri(tracking_uri, create=False))
    try:
        v = _alias_version(c, name, CHAMPION)
    except SemlayoutError:
        return None
    return (c, v) if v else None


def champion_version(tracking_uri: str | None, name: str) -> int | None:
    """The version the `champion` alias points at; None if the model has none (or does not exist,
    or the SQLite registry is not created yet). An unreachable server still raises."""
    found = _champion(tracking_uri, name)
    return int(found[1]) if found else None


def champion_metrics(tracking_uri: str | None, name: str) -> dict[str, Any] | None:
    """The champion's evaluation metrics (evaluate dict shape), or None without a champion."""
    found = _champion(tracking_uri, name)
    if not found:
        return None
    c, v = found
    mv = c.get_model_version(name, v)
    metrics = _run_metrics(c, mv.run_id) if mv.run_id else None
    if metrics is None:
        with contextlib.suppress(json.JSONDecodeError):
            metrics = json.loads((mv.tags or {}).get("gate_metrics", "null"))
    return metrics


def cache_root() -> Path:
    env = os.environ.get("SEMLAYOUT_CACHE_DIR")
    base = (
        Path(env)
        if env
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "semlayout"
    )
    return base / "models"


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """'models:/NAME@ALIAS' -> (NAME, None, ALIAS); 'models:/NAME/3' -> (NAME, '3', None)."""
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias and "/" not in name:
            return name, None, alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and "/" not in name and version.isdigit():
            return name, version, None
    raise SemlayoutError(
        f"model URI '{uri}' is not valid: expected models:/NAME@ALIAS or models:/NAME/VERSION"
    )


def resolve_model_uri(uri: str | os.PathLike[str], tracking_uri: str | None = None) -> Path:
    """A local checkpoint folder for `uri`.

    A plain path is returned as is. `models:/NAME@ALIAS` and `models:/NAME/VERSION` are
    resolved now (aliases move) and the version's checkpoint is downloaded once into
    `$SEMLAYOUT_CACHE_DIR/models/<registry>/<name>/<version>-<source hash>/` (atomically:
    a killed download leaves no folder that looks complete).
    """
    text = str(uri)
    if not text.startswith("models:/"):
        if "://" in text or text.startswith("runs:/"):
            raise SemlayoutError(
                f"model '{text}' is not supported: expected a checkpoint folder or models:/NAME@ALIAS"
            )
        path = Path(text)
        if not path.is_dir():
            raise SemlayoutError(f"checkpoint folder not found: {path}")
        return path
    name, version, alias = parse_models_uri(text)
    tracking = check_tracking_uri(tracking_uri, create=False)
    c = client(tracking)
    if alias is not None:
        _get_model(c, name)
        with mlflow_errors(f"alias '{alias}' of model '{name}'"):
            mv = c.get_model_version_by_alias(name, alias)
    else:
        mv = _get_version(c, name, version or "")
    key = hashlib.sha256(f"{tracking}|{mv.source}|{mv.run_id}".encode()).hexdigest()[:12]
    dest = (
        cache_root()
        / hashlib.sha256(tracking.encode()).hexdigest()[:10]
        / name
        / f"{mv.version}-{key}"
    )
    ckpt = dest / "checkpoint"
    if (ckpt / "config.json").is_file() and (ckpt / "weights.safetensors").is_file():
        return ckpt
    import mlflow

    from semlayout.atomic import atomic_dir

    # another process may finish the same download first: keep its (complete) folder, so a
    # reader of that folder never sees it replaced; a broken leftover is overwritten
    try:
        with atomic_dir(dest, overwrite=dest.exists()) as tmp:
            prev = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
            try:
                with (
                    mlflow_errors(f"artifacts of model '{name}' version {mv.version}"),
                    use_tracking_uri(tracking),
                ):
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=f"models:/{name}/{mv.version}",
                        dst_path=str(tmp / "model"),
                        tracking_uri=tracking,
                    )
            finally:
                if prev is None:
                    os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
                else:
                    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = prev
            src = tmp / "model" / "artifacts" / "checkpoint"
            if not (src / "config.json").is_file():
                raise SemlayoutError(
                    f"model '{name}' version {mv.version} holds no semlayout checkpoint (artifacts/checkpoint)"
                )
            src.rename(tmp / "checkpoint")
            (tmp / "version.json").write_text(
                _json(
                    {
                        "name": name,
                        "version": mv.version,
                        "source": mv.source,
                        "run_id": mv.run_id,
                        "tracking_uri": tracking,
                    }
                )
            )
            shutil.rmtree(tmp / "model", ignore_errors=True)
    except OSError:
        # FileExistsError / ENOTEMPTY: someone else's complete download landed first
        if not ((ckpt / "config.json").is_file() and (ckpt / "weights.safetensors").is_file()):
            raise
    return ckpt


# --------------------------------------------------------------------------- decisions
def approve(
    tracking_uri: str | None, name: str, version: int | str, by: str, reason: str
) -> dict[str, Any]:
    """Promote `version` to `champion` (the old champion becomes `previous-champion`).

    Refused: an unknown version, a version whose gate failed or has no verdict, a rejected
    version, the current champion again, an empty `by` / `reason`.
    """
    by, reason = _require(by, "--by (who approves)"), _require(reason, "--reason")
    c = client(check_tracking_uri(tracking_uri, create=False))
    mv = _get_version(c, name, version)
    v = str(mv.version)
    tags = mv.tags or {}
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
    old = _alias_version(c, name, CHAMPION)
    if old == v:
        raise SemlayoutError(f"model '{name}' version {v} is already the champion")
    at = _now()
    # 1. tags first: no alias ever points at a version without its approval record
    c.set_model_version_tag(name, v, "approved_by", by)
    c.set_model_version_tag(name, v, "approved_at", at)
    c.set_model_version_tag(name, v, "approval_reason", reason)
    model = c.get_registered_model(name)
    history = [str(x) for x in _read_list(model.tags or {}, HISTORY_TAG)]
    if old and (not history or history[-1] != old):
        history.append(old)  # a champion set by hand outside semlayout
    history.append(v)
    c.set_registered_model_tag(name, HISTORY_TAG, _fit_list(history, MODEL_TAG_LIMIT))
    event = {
        "action": "approved",
        "version": int(v),
        "by": by,
        "reason": reason,
        "previous_champion": int(old) if old else None,
    }
    _audit(c, name, [v] + ([old] if old else []), event)
    # 2. then the aliases
    if old:
        c.set_registered_model_alias(name, PREVIOUS, old)
    c.set_registered_model_alias(name, CHAMPION, v)
    if _alias_version(c, name, CHALLENGER) == v:
        c.delete_registered_model_alias(name, CHALLENGER)
    return {
        "name": name,
        "champion": int(v),
        "previous_champion": int(old) if old else None,
        "at": at,
    }


def reject(
    tracking_uri: str | None, name: str, version: int | str, by: str, reason: str
) -> dict[str, Any]:
    """Record a rejection; the `challenger` alias is removed if it points at `version`."""
    by, reason = _require(by, "--by (who rejects)"), _require(reason, "--reason")
    c = client(check_tracking_uri(tracking_uri, create=False))
    mv = _get_version(c, name, version)
    v = str(mv.version)
    if _alias_version(c, name, CHAMPION) == v:
        raise SemlayoutError(
            f"model '{name}' version {v} is the champion; use `semlayout registry rollback` instead"
        )
    if (mv.tags or {}).get("rejected_by"):
        raise SemlayoutError(f"model '{name}' version {v} is already rejected")
    at = _now()
    c.set_model_version_tag(name, v, "rejected_by", by)
    c.set_model_version_tag(name, v, "rejected_at", at)
    c.set_model_version_tag(name, v, "rejection_reason", reason)
    _audit(c, name, [v], {"action": "rejected", "version": int(v), "by": by, "reason": reason})
    removed = False
    if _alias_version(c, name, CHALLENGER) == v:
        c.delete_registered_model_alias(name, CHALLENGER)
        removed = True
    return {"name": name, "rejected": int(v), "challenger_removed": removed, "at": at}


def rollback(tracking_uri: str | None, name: str, by: str, reason: str) -> dict[str, Any]:
    """`champion` <- `previous-champion`; `previous-champion` <- the champion before that
    (from `champion_history`, skipping rolled-back versions), or removed when there is none."""
    by, reason = _require(by, "--by (who rolls back)"), _require(reason, "--reason")
    c = client(check_tracking_uri(tracking_uri, create=False))
    cur = _alias_version(c, name, CHAMPION)
    prev = _alias_version(c, name, PREVIOUS)
    if not cur:
        raise SemlayoutError(f"model '{name}' has no champion to roll back")
    if not prev:
        raise SemlayoutError(f"model '{name}' has no previous-champion to roll back to")
    model = c.get_registered_model(name)
    history = [str(x) for x in _read_list(model.tags or {}, HISTORY_TAG)]
    history = [h for h in history if h != cur]
    # the new previous-champion: latest earlier champion that is neither prev nor rolled back
    before = history[: history.index(prev)] if prev in history else []
    candidates = [
        h
        for h in reversed(before)
        if not (c.get_model_version(name, h).tags or {}).get("rolled_back_by")
    ]
    new_prev = candidates[0] if candidates else None
    at = _now()
    c.set_model_version_tag(name, cur, "rolled_back_by", by)
    c.set_model_version_tag(name, cur, "rolled_back_at", at)
    c.set_model_version_tag(name, cur, "rollback_reason", reason)
    c.set_registered_model_tag(name, HISTORY_TAG, _fit_list(history, MODEL_TAG_LIMIT))
    _audit(
        c,
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
    c.set_registered_model_alias(name, CHAMPION, prev)
    if new_prev:
        c.set_registered_model_alias(name, PREVIOUS, new_prev)
    else:
        c.delete_registered_model_alias(name, PREVIOUS)
    return {
        "name": name,
        "champion": int(prev),
        "rolled_back": int(cur),
        "previous_champion": int(new_prev) if new_prev else None,
        "at": at,
    }


# --------------------------------------------------------------------------- listing
def list_models(tracking_uri: str | None) -> list[dict[str, Any]]:
    c = client(check_tracking_uri(tracking_uri, create=False))
    out = []
    with mlflow_errors("registered models"):
        models = c.search_registered_models(max_results=1000)
    for m in models:
        aliases = {k: int(v) for k, v in (getattr(m, "aliases", None) or {}).items()}
        versions = c.search_model_versions(f"name='{m.name}'", max_results=10000)
        out.append(
            {
                "name": m.name,
                "versions": len(versions),
                "latest": max((int(v.version) for v in versions), default=None),
                "champion": aliases.get(CHAMPION),
                "challenger": aliases.get(CHALLENGER),
                "previous_champion": aliases.get(PREVIOUS),
            }
        )
    return sorted(out, key=lambda d: d["name"])


def _version_summary(mv: Any, aliases: dict[str, str]) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    gate = None
    with contextlib.suppress(Exception):
        gate = json.loads(tags["gate_result"])
    status = "registered"
    if tags.get("rolled_back_by"):
        status = "rolled back"
    if tags.get("rejected_by"):
        status = "rejected"
    if tags.get("approved_by"):
        status = "approved" if not tags.get("rolled_back_by") else "rolled back"
    return {
        "version": int(mv.version),
        "aliases": sorted(a for a, v in aliases.items() if v == str(mv.version)),
        "status": status,
        "run_id": mv.run_id,
        "created": tags.get("registered_at"),
        "gate_passed": {"true": True, "false": False}.get(tags.get("gate_passed", "")),
        "gate": gate,
        "lineage": {k[len("lineage.") :]: v for k, v in tags.items() if k.startswith("lineage.")},
        "decision": {
            k: tags[k]
            for k in (
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
            if k in tags
        },
        "audit_log": _read_list(tags, AUDIT_TAG),
    }


def show(tracking_uri: str | None, name: str, version: int | str | None = None) -> dict[str, Any]:
    """A model (aliases, versions, audit trail) or one version (metrics beside the champion's,
    lineage, gate verdict, decisions, audit trail)."""
    c = client(check_tracking_uri(tracking_uri, create=False))
    model = _get_model(c, name)
    aliases = {k: str(v) for k, v in (getattr(model, "aliases", None) or {}).items()}
    if version is None:
        versions = sorted(
            c.search_model_versions(f"name='{name}'", max_results=10000),
            key=lambda v: int(v.version),
        )
        return {
            "name": name,
            "aliases": {k: int(v) for k, v in aliases.items()},
            "champion_history": [int(x) for x in _read_list(model.tags or {}, HISTORY_TAG)],
            "versions": [_version_summary(v, aliases) for v in versions],
            "audit_log": _read_list(model.tags or {}, AUDIT_TAG),
        }
    mv = _get_version(c, name, version)
    out = _version_summary(mv, aliases)
    out["name"] = name
    metrics = _run_metrics(c, mv.run_id) if mv.run_id else None
    champ = aliases.get(CHAMPION)
    champ_metrics = None
    if champ and champ != str(mv.version):
        cmv = c.get_model_version(name, champ)
        champ_metrics = _run_metrics(c, cmv.run_id) if cmv.run_id else None
    out["champion"] = int(champ) if champ else None
    out["metrics"] = _compact_metrics(metrics)
    out["champion_metrics"] = _compact_metrics(champ_metrics)
    out["model_uri"] = f"models:/{name}/{mv.version}"
    out["source"] = mv.source
    out["run_model"] = MODEL_NAME_IN_RUN
    return out
