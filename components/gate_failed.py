"""The other branch of the gate: nothing is registered; say why (a failed gate is not an error)."""

from typing import NamedTuple


def gate_failed(gate_reasons: str) -> NamedTuple("Outputs", [("version", str), ("model_uri", str)]):
    import json
    from collections import namedtuple

    print("gate failed, nothing registered:")
    for reason in json.loads(gate_reasons):
        print(f"  - {reason}")
    return namedtuple("Outputs", ["version", "model_uri"])("", "")
