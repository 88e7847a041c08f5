"""Pages attached to a model version: the comparison with the champion, logged into the
version's run (`comparison/vB-vs-vA.html`) and named by the version's `comparison` tag, so
`registry approve` and `registry show` can say where it is. mlflow is imported inside."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from semlayout.registry.audit_tags import COMPARISON_AGAINST_TAG, COMPARISON_TAG


def attach_comparison(
    registry: Any, name: str, version: int | str, html: Path, against: int
) -> str:
    """Log `html` into the run of `name` version `version`; returns its `runs:/` URI."""
    mv = registry.version(name, version)
    file_name = f"v{mv.version}-vs-v{against}.html"
    with tempfile.TemporaryDirectory(prefix="semlayout-attach-") as tmp:
        staged = Path(tmp) / file_name
        shutil.copyfile(html, staged)
        with registry.scoped():
            registry.client.log_artifact(mv.run_id, str(staged), "comparison")
    uri = f"runs:/{mv.run_id}/comparison/{file_name}"
    registry.client.set_model_version_tag(name, str(mv.version), COMPARISON_TAG, uri)
    registry.client.set_model_version_tag(
        name, str(mv.version), COMPARISON_AGAINST_TAG, str(against)
    )
    registry.refresh_description(name, str(mv.version))
    return uri


def comparison_location(registry: Any, name: str, version: int | str) -> dict[str, Any] | None:
    """{"uri", "against", "path"} of the version's comparison page (`path`: a local file when
    the artifact store is a folder on this machine, else None); None without a page."""
    mv = registry.version(name, version)
    tags = dict(mv.tags or {})
    uri = tags.get(COMPARISON_TAG)
    if not uri:
        return None
    path = None
    artifact_uri = registry.client.get_run(mv.run_id).info.artifact_uri or ""
    if artifact_uri.startswith("file://") or artifact_uri.startswith("/"):
        local = Path(artifact_uri.removeprefix("file://")) / uri.split("/", 2)[2]  # runs:/ID/REL
        path = str(local) if local.is_file() else None
    against = tags.get(COMPARISON_AGAINST_TAG)
    return {"uri": uri, "against": int(against) if against else None, "path": path}
