"""Should a fine-tune run go ahead? The same decision `semlayout loop check` makes.

`semlayout.continual.check` over the monitoring store, the API feedback store, the S3 intake
batches and the registry's champion (its promotion SSIM, for the SSIM-drop reasons).
With no monitor DB (the caller — `semlayout loop run` — has already decided) or `force`,
it proceeds and says so. The decision is recorded in the store. A bad policy is one
`SemlayoutError` line naming the key, as for the loop config.
"""

from typing import NamedTuple


def drift_check(
    monitor_db: str,
    policy: str,
    force: bool,
    intake_uri: str = "",
    feedback_uri: str = "",
    mlflow_uri: str = "",
    model_name: str = "semlayout",
) -> NamedTuple("Outputs", [("proceed", bool), ("reasons", str)]):
    import json
    from collections import namedtuple

    from semlayout.continual import check, load_loop_config
    from semlayout_components.common import parse_json_object

    Outputs = namedtuple("Outputs", ["proceed", "reasons"])
    settings = {
        "policy": parse_json_object(policy, "trigger policy"),
        "intake_uri": intake_uri,
        "feedback_uri": feedback_uri,
        "tracking_uri": mlflow_uri,
        "model_name": model_name,
    }
    cfg = load_loop_config(None, {**settings, **({"monitor_db": monitor_db} if monitor_db else {})})
    if force or not monitor_db:
        why = "forced" if force else "no monitor store given: the caller decided"
        print(f"proceeding: {why}")
        return Outputs(True, json.dumps([why]))

    from semlayout.continual import open_monitor_store

    decision, _ = check(cfg)
    store = open_monitor_store(cfg)
    try:
        store.record_trigger_decision(decision.fire, decision.to_dict())
    finally:
        store.close()
    print(decision.summary())
    return Outputs(decision.fire, json.dumps([r.detail for r in decision.reasons]))
