"""Step 7 (only when the gate passed): register the run's model as a new version, alias
`challenger`, with the drift reference of the shards it was trained on (the server loads it
with the weights), and attach the comparison with the champion (both scored on the same
pairs, `semlayout registry compare`) to it, so the release manager decides from one page.

Promotion to `champion` is the release manager's decision (`semlayout registry approve`).
"""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input


def register(
    evaluation: Input[Artifact],
    shards: Input[Dataset],
    run_id: str,
    lineage: str,
    mlflow_uri: str,
    model_name: str,
) -> NamedTuple("Outputs", [("version", str), ("model_uri", str)]):
    import json
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from semlayout.comparison import compare_versions
    from semlayout.comparison_report import write_comparison_html
    from semlayout.errors import SemlayoutError
    from semlayout.gate import GateResult
    from semlayout.model_uri import ModelUri
    from semlayout.registry import Registry
    from semlayout_components.common import read_json

    ev = read_json(evaluation.path)
    gate = GateResult.model_validate(ev["gate"])
    registry = Registry(mlflow_uri)
    version = registry.register(
        model_name,
        run_id,
        gate,
        json.loads(lineage),
        drift_reference=shards.path,
        profile=ev.get("profile"),  # a profile fine-tune: the profile and its metrics
    )
    uri = str(ModelUri(model_name, version=str(version)))
    print(f"registered {uri} (alias challenger: {gate.passed})")
    champion = registry.champion_version(model_name)
    if champion is not None and champion != version:
        try:
            with tempfile.TemporaryDirectory(prefix="semlayout-compare-") as tmp:
                result = compare_versions(registry, model_name, champion, version)
                page = write_comparison_html(Path(tmp) / "compare.html", result)
                where = registry.attach_comparison(model_name, version, page, against=champion)
            print(f"comparison with champion v{champion} attached: {where}")
        except SemlayoutError as err:  # registered all the same; the page can be made by hand
            print(
                f"warning: no comparison page ({err}); make one with `semlayout registry compare "
                f"{model_name} {champion} {version} --html compare.html`"
            )
    return namedtuple("Outputs", ["version", "model_uri"])(str(version), uri)
