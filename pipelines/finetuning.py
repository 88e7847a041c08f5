"""The fine-tune pipeline: reviewed pairs + a replay sample -> fine-tune the champion -> judge ->
register.

```
ingest(reviewed) -> align_qc -> shard (new pairs by content: train/val/test, REVIEWED_SPLIT)
ingest(original) -> align_qc -> shard (original: replay pairs, the test shard for forgetting)
finetune (from the champion's weights, semlayout.train.adaptation: the new train split with
          replay of the original train split, best weights on the new val split)
shard_mix(new train + replay sample of original train): the registered drift reference
evaluate_finetune(new test split, original test shard; the champion on both, pair by pair) -> track
dsl.If(gate passed) -> register (alias "challenger")   dsl.Else() -> gate_failed
```
`drift_monitor` wraps it: drift_check over the monitoring store -> dsl.If(proceed) -> this.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Model

from semlayout.gate import DEFAULT_FLOORS, DEFAULT_TOLERANCE
from semlayout.train.recipe import REVIEWED_SPLIT
from semlayout_components.catalog import steps
from semlayout_pipelines.cluster import (
    ClusterSettings,
    on_cpu_pool,
    on_gpu_pool,
    with_mlflow,
    with_s3,
)

PIPELINE_NAME = "semlayout-finetune"


class FinetuneOutputs(NamedTuple):
    gate_passed: bool
    model_version: str
    model_uri: str
    run_id: str
    model: Model
    evaluation: Artifact
    report: HTML


def build_finetune_pipeline(settings: "ClusterSettings | None" = None):  # noqa: ANN201 - GraphComponent
    s = settings or ClusterSettings.from_env()
    c = steps(s.image or None)

    @dsl.pipeline(
        name=PIPELINE_NAME, description="fine-tune the champion on reviewed pairs with replay"
    )
    def finetune_pipeline(
        reviewed_uri: str,
        original_data_uri: str = "",
        n_synth: int = 200,
        replay_n: int = 64,
        seed: int = 0,
        config: str = "small",
        config_overrides: str = "",
        adaptation: str = "",
        base_model: str = "",
        mlflow_uri: str = "",
        experiment: str = "semlayout-finetune",
        model_name: str = "semlayout",
        floor_sem2layout: float = DEFAULT_FLOORS["sem2layout"],
        floor_layout2sem: float = DEFAULT_FLOORS["layout2sem"],
        tolerance: float = DEFAULT_TOLERANCE,
        min_improvement: float = 0.0,
        min_qc_pass: float = 0.5,
    ) -> FinetuneOutputs:
        t_new = with_s3(on_cpu_pool(c.ingest(data_uri=reviewed_uri, n_synth=0, seed=seed), s), s)
        t_new.set_display_name("ingest reviewed pairs")
        t_new_al = on_cpu_pool(
            c.align_qc(pairs=t_new.outputs["pairs"], min_pass_fraction=min_qc_pass), s
        )
        t_new_sh = on_cpu_pool(
            c.shard(
                aligned=t_new_al.outputs["aligned"],
                val=REVIEWED_SPLIT["val"],
                test=REVIEWED_SPLIT["test"],
                seed=seed,
                split_by="content",
            ),
            s,
        )
        t_orig = with_s3(
            on_cpu_pool(c.ingest(data_uri=original_data_uri, n_synth=n_synth, seed=seed), s), s
        )
        t_orig.set_display_name("ingest original data")
        t_orig_al = on_cpu_pool(
            c.align_qc(pairs=t_orig.outputs["pairs"], min_pass_fraction=min_qc_pass), s
        )
        t_orig_sh = on_cpu_pool(
            c.shard(aligned=t_orig_al.outputs["aligned"], val=0.1, test=0.2, seed=seed), s
        )
        t_mix = on_cpu_pool(
            c.shard_mix(
                new_shards=t_new_sh.outputs["shards"],
                original_shards=t_orig_sh.outputs["shards"],
                replay_n=replay_n,
                seed=seed,
            ),
            s,
        )
        t_ft = with_mlflow(
            on_gpu_pool(
                c.finetune(
                    new_shards=t_new_sh.outputs["shards"],
                    original_shards=t_orig_sh.outputs["shards"],
                    mlflow_uri=mlflow_uri,
                    model_name=model_name,
                    base_model=base_model,
                    overrides=config_overrides,
                    recipe=adaptation,
                ),
                s,
            ),
            s,
        )
        t_eval = with_mlflow(
            on_cpu_pool(
                c.evaluate_finetune(
                    model=t_ft.outputs["model"],
                    new_shards=t_new_sh.outputs["shards"],
                    original_shards=t_orig_sh.outputs["shards"],
                    mlflow_uri=mlflow_uri,
                    model_name=model_name,
                    base_model=base_model,
                    floor_sem2layout=floor_sem2layout,
                    floor_layout2sem=floor_layout2sem,
                    tolerance=tolerance,
                    min_improvement=min_improvement,
                ),
                s,
            ),
            s,
        )
        t_track = with_mlflow(
            on_cpu_pool(
                c.track(
                    pairs=t_new.outputs["pairs"],
                    shards=t_orig_sh.outputs["shards"],
                    model=t_ft.outputs["model"],
                    evaluation=t_eval.outputs["evaluation"],
                    report=t_eval.outputs["report"],
                    mlflow_uri=mlflow_uri,
                    experiment=experiment,
                    config=config,
                    pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                ),
                s,
            ),
            s,
        )
        with dsl.If(t_eval.outputs["gate_passed"] == True, name="finetune-gate-passed"):  # noqa: E712
            t_reg = with_mlflow(
                on_cpu_pool(
                    c.register(
                        evaluation=t_eval.outputs["evaluation"],
                        shards=t_mix.outputs["mixed"],
                        run_id=t_track.outputs["run_id"],
                        lineage=t_track.outputs["lineage"],
                        mlflow_uri=mlflow_uri,
                        model_name=model_name,
                    ),
                    s,
                ),
                s,
            )
        with dsl.Else(name="finetune-gate-failed"):
            t_skip = c.gate_failed(gate_reasons=t_eval.outputs["gate_reasons"])
            t_skip.after(t_track)
        return FinetuneOutputs(
            gate_passed=t_eval.outputs["gate_passed"],
            model_version=dsl.OneOf(t_reg.outputs["version"], t_skip.outputs["version"]),
            model_uri=dsl.OneOf(t_reg.outputs["model_uri"], t_skip.outputs["model_uri"]),
            run_id=t_track.outputs["run_id"],
            model=t_ft.outputs["model"],
            evaluation=t_eval.outputs["evaluation"],
            report=t_eval.outputs["report"],
        )

    return finetune_pipeline


def build_drift_monitor_pipeline(settings: "ClusterSettings | None" = None):  # noqa: ANN201
    """For a recurring run on the cluster: check the triggers, fine-tune only when they fire."""
    s = settings or ClusterSettings.from_env()
    c = steps(s.image or None)
    inner = build_finetune_pipeline(s)

    @dsl.pipeline(
        name="semlayout-drift-monitor", description="trigger check, then the fine-tune pipeline"
    )
    def drift_monitor_pipeline(
        reviewed_uri: str,
        monitor_db: str,
        trigger_policy: str = "",
        force: bool = False,
        original_data_uri: str = "",
        mlflow_uri: str = "",
        model_name: str = "semlayout",
        config: str = "small",
    ):
        t_check = c.drift_check(monitor_db=monitor_db, policy=trigger_policy, force=force)
        with dsl.If(t_check.outputs["proceed"] == True, name="triggered"):  # noqa: E712
            inner(
                reviewed_uri=reviewed_uri,
                original_data_uri=original_data_uri,
                mlflow_uri=mlflow_uri,
                model_name=model_name,
                config=config,
            )

    return drift_monitor_pipeline
