"""`RegistryReader`: what can be read from an MLflow registry without changing it.

Model lookups, the champion and its metrics, `registry list` / `registry show`, and turning a
`models:/` URI into a local checkpoint folder. `semlayout.registry.Registry` adds the writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from semlayout.errors import SemlayoutError
from semlayout.model_uri import ModelUri
from semlayout.registry.audit_tags import (
    AUDIT_TAG,
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    PREVIOUS,
    compact_metrics,
    read_list,
    version_str,
    version_summary,
)
from semlayout.registry.model_cache import checkpoint_folder, download_checkpoint
from semlayout.registry.run_logging import MODEL_NAME_IN_RUN
from semlayout.registry.tracking import (
    check_tracking_uri,
    mlflow_errors,
    no_progress_bars,
    registry_missing,
    use_tracking_uri,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from mlflow.tracking import MlflowClient


class RegistryReader:
    """One MLflow registry, its URI checked once (`check_tracking_uri`) and its client kept.

    `create=False` (read-only use): a missing SQLite file is an error instead of a new, empty
    registry appearing somewhere by accident. mlflow is imported here, not at module import.
    """

    def __init__(self, tracking_uri: str | None = None, create: bool = False) -> None:
        from mlflow.tracking import MlflowClient

        self.uri: str = check_tracking_uri(tracking_uri, create=create)
        self.client: MlflowClient = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    @classmethod
    def existing(cls, tracking_uri: str | None = None) -> Self | None:
        """The registry, or None when the URI names a SQLite registry not created yet (a first
        run: no champion). An unreachable server still raises."""
        return None if registry_missing(tracking_uri) else cls(tracking_uri)

    @classmethod
    def local_checkpoint(
        cls, model: str | os.PathLike[str], tracking_uri: str | None = None
    ) -> Path:
        """`resolve` for a model that may be a plain folder: no registry is opened for one."""
        if not ModelUri.is_model_uri(model):
            return checkpoint_folder(model)
        ref = ModelUri.parse(str(model))  # a malformed URI is reported before the registry
        return cls(tracking_uri).fetch(ref)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def scoped(self) -> contextlib.AbstractContextManager[None]:
        """MLflow's global tracking/registry URI pointed at this registry for a `with` block."""
        return use_tracking_uri(self.uri)

    # ------------------------------------------------------------------------- lookups
    def model(self, name: str) -> RegisteredModel:
        with mlflow_errors(f"registered model '{name}'"):
            return self.client.get_registered_model(name)

    def version(self, name: str, version: int | str) -> ModelVersion:
        v = version_str(version)
        self.model(name)
        with mlflow_errors(f"model '{name}' version {v}"):
            return self.client.get_model_version(name, v)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version number `alias` points at; None when the model has no such alias."""
        aliases = getattr(self.model(name), "aliases", None) or {}
        v = aliases.get(alias)
        return str(v) if v is not None else None

    def lookup(self, ref: ModelUri) -> ModelVersion:
        """The version `ref` names now (an alias is resolved on every call: aliases move)."""
        if ref.alias is not None:
            model = self.model(ref.name)
            if ref.alias not in (getattr(model, "aliases", None) or {}):
                raise SemlayoutError(_missing_alias(ref.name, ref.alias, model.aliases or {}))
            with mlflow_errors(f"alias '{ref.alias}' of model '{ref.name}'"):
                return self.client.get_model_version_by_alias(ref.name, ref.alias)
        return self.version(ref.name, ref.version or "")

    def run_metrics(self, run_id: str) -> dict[str, Any] | None:
        """The nested metrics dict logged as `metrics.json`; None when the run has none."""
        return self.run_json(run_id, "metrics.json")

    def run_json(self, run_id: str, name: str) -> dict[str, Any] | None:
        """A JSON object logged in the run as `name`; None when the run has none."""
        with tempfile.TemporaryDirectory(prefix="semlayout-json-") as tmp, no_progress_bars():
            try:
                path = self.client.download_artifacts(run_id, name, tmp)
                value = json.loads(Path(path).read_text())
            except Exception:
                return None
        return value if isinstance(value, dict) else None

    # ------------------------------------------------------------------------- champion
    def _champion(self, name: str) -> str | None:
        try:
            return self.alias_version(name, CHAMPION)
        except SemlayoutError:  # no such model
            return None

    def champion_version(self, name: str) -> int | None:
        """The version the `champion` alias points at; None if the model has none (or does not
        exist). Use `Registry.existing` when the registry itself may not exist yet."""
        v = self._champion(name)
        return int(v) if v else None

    def champion_metrics(self, name: str) -> dict[str, Any] | None:
        """The champion's evaluation metrics (evaluate dict shape), or None without a champion."""
        v = self._champion(name)
        if not v:
            return None
        mv = self.client.get_model_version(name, v)
        metrics = self.run_metrics(mv.run_id) if mv.run_id else None
        if metrics is None:
            with contextlib.suppress(json.JSONDecodeError):
                metrics = json.loads((mv.tags or {}).get("gate_metrics", "null"))
        return metrics

    # ------------------------------------------------------------------------- checkpoints
    def resolve(self, model: str | os.PathLike[str]) -> Path:
        """A local checkpoint folder for a checkpoint folder or a `models:/` URI.

        A plain folder is returned as is. `models:/NAME@ALIAS` and `models:/NAME/VERSION` are
        resolved now (aliases move) and the version's checkpoint is downloaded once into the
        cache (`semlayout.registry.model_cache`).
        """
        if not ModelUri.is_model_uri(model):
            return checkpoint_folder(model)
        return self.fetch(ModelUri.parse(str(model)))

    def fetch(self, ref: ModelUri) -> Path:
        """The cached (downloaded on first use) checkpoint folder of the version `ref` names."""
        return download_checkpoint(self.uri, ref.name, self.lookup(ref))

    def _champion_beside(
        self, run_id: str | None, name: str, champ: str
    ) -> tuple[dict[str, Any] | None, str]:
        """The champion's metrics to show beside a version's: its scores on the version's own
        test pairs when the gate evaluated this champion there ("same_pairs"), else the
        champion's own evaluation ("own_test_split": other pairs, not comparable)."""
        same = self.run_json(run_id, "champion_metrics.json") if run_id else None
        if same and str(same.get("champion_version")) == champ and same.get("metrics"):
            return same["metrics"], "same_pairs"
        cmv = self.client.get_model_version(name, champ)
        return (self.run_metrics(cmv.run_id) if cmv.run_id else None), "own_test_split"

    def comparison(self, name: str, version: int | str) -> dict[str, Any] | None:
        """Where the version's comparison page is (`registry.attachments`); None without one."""
        from semlayout.registry.attachments import comparison_location

        return comparison_location(self, name, version)

    # ------------------------------------------------------------------------- listing
    def list_models(self) -> list[dict[str, Any]]:
        out = []
        with mlflow_errors("registered models"):
            models = self.client.search_registered_models(max_results=1000)
        for m in models:
            aliases = {k: int(v) for k, v in (getattr(m, "aliases", None) or {}).items()}
            versions = self.client.search_model_versions(f"name='{m.name}'", max_results=10000)
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

    def show(self, name: str, version: int | str | None = None) -> dict[str, Any]:
        """A model (aliases, versions, audit trail) or one version (metrics beside the
        champion's, lineage, gate verdict, decisions, audit trail)."""
        model = self.model(name)
        aliases = {k: str(v) for k, v in (getattr(model, "aliases", None) or {}).items()}
        if version is None:
            versions = sorted(
                self.client.search_model_versions(f"name='{name}'", max_results=10000),
                key=lambda v: int(v.version),
            )
            return {
                "name": name,
                "aliases": {k: int(v) for k, v in aliases.items()},
                "champion_history": [int(x) for x in read_list(model.tags or {}, HISTORY_TAG)],
                "versions": [version_summary(v, aliases) for v in versions],
                "audit_log": read_list(model.tags or {}, AUDIT_TAG),
            }
        return self._show_version(name, version, aliases)

    def _show_version(
        self, name: str, version: int | str, aliases: dict[str, str]
    ) -> dict[str, Any]:
        mv = self.version(name, version)
        out = version_summary(mv, aliases)
        out["name"] = name
        metrics = self.run_metrics(mv.run_id) if mv.run_id else None
        champ = aliases.get(CHAMPION)
        champ_metrics, basis = None, None
        if champ and champ != str(mv.version):
            champ_metrics, basis = self._champion_beside(mv.run_id, name, champ)
        out["champion"] = int(champ) if champ else None
        out["champion_basis"] = basis
        out["metrics"] = compact_metrics(metrics)
        out["champion_metrics"] = compact_metrics(champ_metrics)
        out["model_uri"] = str(ModelUri(name, version=str(mv.version)))
        out["source"] = mv.source
        out["run_model"] = MODEL_NAME_IN_RUN
        return out


def _missing_alias(name: str, alias: str, aliases: dict[str, Any]) -> str:
    """What to do when `models:/NAME@ALIAS` names no version: the next command to run."""
    if alias == CHAMPION:
        challenger = aliases.get(CHALLENGER)
        which = str(challenger) if challenger is not None else "VERSION"
        hint = f" (the challenger is v{challenger})" if challenger is not None else ""
        return (
            f"model '{name}' has no champion yet{hint}: promote a version with "
            f"`semlayout registry approve {name} {which} --by YOU --reason ...` "
            f"(`semlayout registry show {name}` lists them)"
        )
    known = ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())) or "none"
    return (
        f"model '{name}' has no alias '{alias}' (its aliases: {known}); "
        f"`semlayout registry show {name}` lists the versions"
    )
