"""The training pipeline: ingest -> align/QC -> shard -> train -> evaluate -> track -> gate ->
register.

```
ingest(data_uri | synth) -> align_qc -> shard -> train -> evaluate --+--> track (always)
                                                                      |
                       dsl.If(evaluate.gate_passed) -> register (alias "challenger")
                       dsl.Else()                   -> gate_failed (nothing registered; reasons)
```
Parameters are the run-time knobs; GPU pool, limits, retries and secrets are
compile-time `ClusterSettings` (see `pipelines.cluster`).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Model

from semlayout.gate import DEFAULT_FLOORS, DEFAULT_TOLERANCE
from semlayout.polarity import DEFAULT_SYNTH_REVERSE_FRACTION
from semlayout_components.catalog import steps
from semlayout_pipelines.cluster import (
    ClusterSettings,
    on_cpu_pool,
    on_gpu_pool,
    with_mlflow,
    with_s3,
)

PIPELINE_NAME = "semlayout-training"


class TrainingOutputs(NamedTuple):
    gate_passed: bool
    model_version: str
    model_uri: str
    run_id: str
    model: Model
    evaluation: Artifact
    report: HTML
    shards: Dataset


def build_training_pipeline(settings: "ClusterSettings | None" = None):  # noqa: ANN201 - GraphComponent
    s = settings or ClusterSettings.from_env()
    c = steps(s.image or None)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="SEM<->layout: align, shard, train, evaluate, gate, register",
    )
    def training_pipeline(
        data_uri: str = "",
        n_synth: int = 200,
        seed: int = 0,
        config: str = "small",
        config_overrides: str = "",
        mlflow_uri: str = "",
        experiment: str = "semlayout",
        model_name: str = "semlayout",
        floor_sem2layout: float = DEFAULT_FLOORS["sem2layout"],
        floor_layout2sem: float = DEFAULT_FLOORS["layout2sem"],
        tolerance: float = DEFAULT_TOLERANCE,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        min_qc_pass: float = 0.5,
        synth_reverse_fraction: float = DEFAULT_SYNTH_REVERSE_FRACTION,
    ) -> TrainingOutputs:
        t_ingest = with_s3(
            on_cpu_pool(
                c.ingest(
                    data_uri=data_uri,
                    n_synth=n_synth,
                    seed=seed,
                    reverse_fraction=synth_reverse_fraction,
                ),
                s,
            ),
            s,
        )
        t_ingest.set_display_name("ingest")
        t_align = on_cpu_pool(
            c.align_qc(pairs=t_ingest.outputs["pairs"], min_pass_fraction=min_qc_pass), s
        )
        t_align.set_display_name("align + QC")
        t_shard = on_cpu_pool(
            c.shard(
                aligned=t_align.outputs["aligned"], val=val_fraction, test=test_fraction, seed=seed
            ),
            s,
        )
        t_train = on_gpu_pool(
            c.train(
                shards=t_shard.outputs["shards"],
                config=config,
                overrides=config_overrides,
                gpus=s.gpus,
            ),
            s,
        )
        t_train = with_mlflow(t_train, s)
        t_eval = with_mlflow(
            on_cpu_pool(
                c.evaluate(
                    model=t_train.outputs["model"],
                    shards=t_shard.outputs["shards"],
                    mlflow_uri=mlflow_uri,
                    model_name=model_name,
                    floor_sem2layout=floor_sem2layout,
                    floor_layout2sem=floor_layout2sem,
                    tolerance=tolerance,
                ),
                s,
            ),
            s,
        )
        t_track = with_mlflow(
            on_cpu_pool(
                c.track(
                    pairs=t_ingest.outputs["pairs"],
                    shards=t_shard.outputs["shards"],
                    model=t_train.outputs["model"],
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
        with dsl.If(t_eval.outputs["gate_passed"] == True, name="gate-passed"):  # noqa: E712 - a KFP condition
            t_reg = with_mlflow(
                on_cpu_pool(
                    c.register(
                        evaluation=t_eval.outputs["evaluation"],
                        shards=t_shard.outputs["shards"],
                        run_id=t_track.outputs["run_id"],
                        lineage=t_track.outputs["lineage"],
                        mlflow_uri=mlflow_uri,
                        model_name=model_name,
                    ),
                    s,
                ),
                s,
            )
        with dsl.Else(name="gate-failed"):
            t_skip = c.gate_failed(gate_reasons=t_eval.outputs["gate_reasons"])
            t_skip.after(t_track)
        return TrainingOutputs(
            gate_passed=t_eval.outputs["gate_passed"],
            model_version=dsl.OneOf(t_reg.outputs["version"], t_skip.outputs["version"]),
            model_uri=dsl.OneOf(t_reg.outputs["model_uri"], t_skip.outputs["model_uri"]),
            run_id=t_track.outputs["run_id"],
            model=t_train.outputs["model"],
            evaluation=t_eval.outputs["evaluation"],
            report=t_eval.outputs["report"],
            shards=t_shard.outputs["shards"],
        )

    return training_pipeline
