"""Step 7 (only when the gate passed): register the run's model as a new version, alias
`challenger`, with the drift reference of the shards it was trained on (the server loads it
with the weights).

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
    from collections import namedtuple

    from semlayout.gate import GateResult
    from semlayout.model_uri import ModelUri
    from semlayout.registry import Registry
    from semlayout_components.common import read_json

    ev = read_json(evaluation.path)
    gate = GateResult.model_validate(ev["gate"])
    version = Registry(mlflow_uri).register(
        model_name, run_id, gate, json.loads(lineage), drift_reference=shards.path
    )
    uri = str(ModelUri(model_name, version=str(version)))
    print(f"registered {uri} (alias challenger: {gate.passed})")
    return namedtuple("Outputs", ["version", "model_uri"])(str(version), uri)
