"""Should a fine-tune run go ahead? The trigger policy over the monitoring store.

With no monitor DB (the caller — `semlayout loop run` — has already decided) or
`force`, it proceeds and says so. The decision is recorded in the store.
"""

from typing import NamedTuple

from kfp import dsl

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def drift_check(monitor_db: str, policy: str, force: bool
                ) -> NamedTuple("Outputs", [("proceed", bool), ("reasons", str)]):
    import json
    from collections import namedtuple
    from datetime import UTC, datetime

    from components.common import parse_json_object

    Out = namedtuple("Outputs", ["proceed", "reasons"])
    if force or not monitor_db:
        why = "forced" if force else "no monitor store given: the caller decided"
        print(f"proceeding: {why}")
        return Out(True, json.dumps([why]))

    from semlayout.monitoring.store import MonitorStore
    from semlayout.triggers import Observations, TriggerPolicy, decide

    pol = TriggerPolicy(**parse_json_object(policy, "trigger policy"))
    store = MonitorStore(monitor_db, create=False)
    rate, n = store.drift_stats(pol.drift_window)
    rolling, samples = {}, {}
    for direction in ("sem2layout", "layout2sem"):
        value, k = store.rolling_ssim_stats(direction, pol.ssim_window)
        if value is not None:
            rolling[direction], samples[direction] = value, k
    last = store.last_trigger_time()
    obs = Observations(new_pairs_feedback=store.feedback_count(since=last), drift_rate=rate,
                       drift_samples=n, rolling_ssim=rolling, ssim_samples=samples, last_run_at=last)
    decision = decide(pol, obs, datetime.now(UTC))
    store.record_trigger_decision(decision.fire, decision.to_dict())
    print(decision.summary())
    return Out(decision.fire, json.dumps([r.detail for r in decision.reasons]))
