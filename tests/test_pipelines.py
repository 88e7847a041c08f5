"""The KFP pipelines: DAG structure from the compiled IR YAML, cluster settings, cron, and
end-to-end runs under the real kfp.local runner (marked slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semlayout.errors import SemlayoutError

REPO = Path(__file__).resolve().parents[1]


def _compile(tmp_path: Path, **settings: object) -> dict[str, tuple[dict, dict]]:
    from semlayout_pipelines.cluster import ClusterSettings
    from semlayout_pipelines.compile import compile_pipelines

    paths = compile_pipelines(tmp_path, settings=ClusterSettings(**settings))
    out = {}
    for name, path in paths.items():
        docs = list(yaml.safe_load_all(path.read_text()))
        assert len(docs) == 2, "pipeline spec + kubernetes platform spec"
        out[name] = (docs[0], docs[1])
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, dict]]:
    return _compile(
        tmp_path_factory.mktemp("ir"),
        gpus=2,
        node_selector="pool=gpu-l4",
        toleration_key="nvidia.com/gpu",
    )


def _k8s(platform: dict) -> dict:
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_training_dag_order_and_artifacts(compiled: dict) -> None:
    spec, _ = compiled["training"]
    tasks = spec["root"]["dag"]["tasks"]
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["ingest"] == set()
    assert deps["align-qc"] == {"ingest"}
    assert deps["shard"] == {"align-qc"}
    assert deps["train"] == {"shard"}
    assert deps["evaluate"] == {"shard", "train"}
    assert deps["track"] == {"evaluate", "ingest", "shard", "train"}

    # artifacts passed between steps, by name and producer
    def src(task: str, name: str) -> tuple[str, str]:
        a = tasks[task]["inputs"]["artifacts"][name]["taskOutputArtifact"]
        return a["producerTask"], a["outputArtifactKey"]

    assert src("align-qc", "pairs") == ("ingest", "pairs")
    assert src("shard", "aligned") == ("align-qc", "aligned")
    assert src("train", "shards") == ("shard", "shards")
    assert src("evaluate", "model") == ("train", "model")
    assert src("evaluate", "shards") == ("shard", "shards")
    # evaluate publishes a Metrics and an HTML artifact
    outs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert outs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    params = spec["components"]["comp-evaluate"]["outputDefinitions"]["parameters"]
    assert params["gate_passed"]["parameterType"] == "BOOLEAN"


def test_training_gate_condition_guards_register(compiled: dict) -> None:
    spec, _ = compiled["training"]
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    conds = {name: t["triggerPolicy"]["condition"] for name, t in branches.items()}
    passed = [n for n, c in conds.items() if not c.startswith("!")]
    failed = [n for n, c in conds.items() if c.startswith("!")]
    assert len(passed) == 1 and len(failed) == 1
    assert "evaluate-gate_passed'] == true" in conds[passed[0]]
    in_pass = spec["components"][f"comp-{passed[0]}"]["dag"]["tasks"]
    in_fail = spec["components"][f"comp-{failed[0]}"]["dag"]["tasks"]
    assert set(in_pass) == {"register"}
    assert set(in_fail) == {"gate-failed"}
    # register is the only task that writes a model version, and only under the gate
    assert "register" not in spec["root"]["dag"]["tasks"]
    reg_in = in_pass["register"]["inputs"]
    assert (
        reg_in["parameters"]["run_id"]["componentInputParameter"] == "pipelinechannel--track-run_id"
    )


def test_gpu_requests_node_selector_tolerations_only_on_training(compiled: dict) -> None:
    for name, train_exec in (("training", "exec-train"), ("finetune", "exec-finetune")):
        spec, platform = compiled[name]
        execs = spec["deploymentSpec"]["executors"]
        res = execs[train_exec]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert res["accelerator"]["resourceCount"] == "2"
        assert res["resourceCpuLimit"] == "8" and res["resourceMemoryLimit"] == "32Gi"
        k8s = _k8s(platform)[train_exec]
        assert k8s["nodeSelector"]["labels"] == {"pool": "gpu-l4"}
        assert k8s["tolerations"] == [
            {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
        ]
        # light steps stay off the GPU pool
        for ex_name, ex in execs.items():
            if ex_name != train_exec:
                assert "accelerator" not in ex["container"].get("resources", {}), ex_name
                assert "nodeSelector" not in _k8s(platform).get(ex_name, {}), ex_name


def test_secrets_retries_and_image(compiled: dict) -> None:
    spec, platform = compiled["training"]
    k8s = _k8s(platform)
    for ex in ("exec-ingest", "exec-train", "exec-evaluate", "exec-track", "exec-register"):
        secrets = {
            s["secretName"]: {k["envVar"] for k in s["keyToEnv"]} for s in k8s[ex]["secretAsEnv"]
        }
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secrets["semlayout-s3"], ex
    for ex in ("exec-train", "exec-evaluate", "exec-track", "exec-register"):
        names = {s["secretName"] for s in k8s[ex]["secretAsEnv"]}
        assert "semlayout-mlflow" in names, ex
    tasks = spec["root"]["dag"]["tasks"]
    for t in ("ingest", "align-qc", "shard", "train", "evaluate", "track"):
        assert tasks[t]["retryPolicy"]["maxRetryCount"] == 2, t
    for ex in spec["deploymentSpec"]["executors"].values():
        c = ex["container"]
        assert c["image"].startswith("ghcr.io/semlayout/semlayout:") or c[
            "image"
        ] == os.environ.get("SEMLAYOUT_IMAGE")
        # no run-time pip installs: the image carries kfp and semlayout
        assert "pip install" not in " ".join(c["command"])


def test_finetune_dag(compiled: dict) -> None:
    spec, _ = compiled["finetune"]
    tasks = spec["root"]["dag"]["tasks"]
    deps = {n: set(t.get("dependentTasks", [])) for n, t in tasks.items()}
    # reviewed pairs (ingest) and the original data (ingest-2) each aligned and sharded
    assert deps["align-qc"] == {"ingest"} and deps["shard"] == {"align-qc"}
    assert deps["align-qc-2"] == {"ingest-2"} and deps["shard-2"] == {"align-qc-2"}
    assert deps["shard-mix"] == {"shard", "shard-2"}
    # the fine-tune reads the reviewed shards (train + val: early stopping) and replays the
    # original ones; shard-mix is what the registered version's drift reference describes
    assert deps["finetune"] == {"shard", "shard-2"}
    assert deps["evaluate-finetune"] == {"finetune", "shard", "shard-2"}
    shard_params = tasks["shard"]["inputs"]["parameters"]
    assert shard_params["split_by"]["runtimeValue"]["constant"] == "content"
    ev = tasks["evaluate-finetune"]["inputs"]["artifacts"]
    assert ev["new_shards"]["taskOutputArtifact"]["producerTask"] == "shard"
    assert (
        ev["original_shards"]["taskOutputArtifact"]["producerTask"] == "shard-2"
    ), "forgetting check"
    ft = tasks["finetune"]["inputs"]["parameters"]
    assert ft["overrides"]["componentInputParameter"] == "config_overrides"
    assert ft["recipe"]["componentInputParameter"] == "adaptation"
    ft_in = tasks["finetune"]["inputs"]["artifacts"]
    assert ft_in["new_shards"]["taskOutputArtifact"]["producerTask"] == "shard"
    assert ft_in["original_shards"]["taskOutputArtifact"]["producerTask"] == "shard-2"
    branch = next(k for k in spec["components"] if k.startswith("comp-condition-branches"))
    conds = {
        n: t["triggerPolicy"]["condition"]
        for n, t in spec["components"][branch]["dag"]["tasks"].items()
    }
    passed = next(n for n, c in conds.items() if not c.startswith("!"))
    assert "evaluate-finetune-gate_passed'] == true" in conds[passed]
    assert set(spec["components"][f"comp-{passed}"]["dag"]["tasks"]) == {"register"}


def test_drift_monitor_runs_finetune_only_when_triggered(compiled: dict) -> None:
    spec, _ = compiled["drift_monitor"]
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"drift-check", "condition-1"}
    assert "drift-check-proceed'] == true" in tasks["condition-1"]["triggerPolicy"]["condition"]
    assert set(spec["components"]["comp-condition-1"]["dag"]["tasks"]) == {"semlayout-finetune"}


def test_cpu_only_compile_has_no_gpu(tmp_path: Path) -> None:
    out = _compile(tmp_path, gpus=0)
    spec, platform = out["training"]
    res = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert "accelerator" not in res
    assert "nodeSelector" not in _k8s(platform).get("exec-train", {})


def test_image_option_reaches_every_step(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "semlayout.cli",
            "pipeline",
            "compile",
            "--out",
            str(tmp_path),
            "--image",
            "registry.example/semlayout:test",
            "--gpus",
            "4",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    spec = next(yaml.safe_load_all((tmp_path / "training.yaml").read_text()))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/semlayout:test"}
    res = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert res["accelerator"]["resourceCount"] == "4"


@pytest.mark.parametrize(
    "cron", ["0 0 2 * * *", "0 */15 * * * *", "30 0 6 * * MON-FRI", "0 0 0 1 1,7 ?"]
)
def test_valid_cron(cron: str) -> None:
    from semlayout_pipelines.client import validate_cron

    assert validate_cron(cron) == cron


@pytest.mark.parametrize(
    "cron, needle",
    [
        ("0 2 * * *", "5 fields"),
        ("0 0 25 * * *", "hour 25"),
        ("0 0 2 * * * *", "7 fields"),
        ("0 0 x * * *", "hour field"),
        ("0 0 5-2 * * *", "backwards"),
        ("0 */0 * * * *", "step"),
    ],
)
def test_invalid_cron(cron: str, needle: str) -> None:
    from semlayout_pipelines.client import validate_cron

    with pytest.raises(SemlayoutError, match=needle):
        validate_cron(cron)


def test_cli_schedule_rejects_bad_cron_before_network() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "semlayout.cli",
            "pipeline",
            "schedule",
            "--kfp-host",
            "http://127.0.0.1:9",
            "--cron",
            "0 2 * * *",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: cron '0 2 * * *' has 5 fields")
    assert "Traceback" not in r.stderr


def test_cluster_settings_validation() -> None:
    from semlayout_pipelines.cluster import ClusterSettings

    with pytest.raises(SemlayoutError, match="KEY=VALUE"):
        ClusterSettings(node_selector="just-a-key")
    with pytest.raises(SemlayoutError, match="gpus"):
        ClusterSettings(gpus=-1)


# --------------------------------------------------------------------------- kfp.local runs

TINY_FALLBACK = """\
name: pipeline-tiny
generator: {image_size: 32, base_filters: 8, max_filters: 32, n_down: 3, dropout_blocks: 1}
discriminator: {base_filters: 8, n_layers: 2}
train: {epochs: 1, decay_start_epoch: 0, batch_size: 4, max_steps: 2, checkpoint_every: 1000, \
buffer_size: 0}
"""


@pytest.fixture(scope="module")
def tiny_run_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """~24 synthetic pairs on disk and a seconds-scale config
    (configs/tiny.yaml, capped at 2 steps)."""
    from semlayout.data.synth import synthesize

    root = tmp_path_factory.mktemp("tinydata")
    data = synthesize(root / "pairs", n=24, seed=3, progress=False)
    if (REPO / "configs" / "tiny.yaml").is_file():
        cfg = ["--config", "tiny", "--set", "train.max_steps=2"]
    else:
        (root / "tiny.yaml").write_text(TINY_FALLBACK)
        cfg = ["--config", str(root / "tiny.yaml")]
    return ["--data", str(data), *cfg]


def _versions(tracking_uri: str, name: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    return sorted(
        str(v.version)
        for v in MlflowClient(tracking_uri=tracking_uri).search_model_versions(f"name='{name}'")
    )


@pytest.mark.slow
def test_local_run_gate_pass_registers_challenger_then_gate_fail_registers_nothing(
    tmp_path: Path, tiny_run_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from semlayout_pipelines.run_local import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "outputs"
    # 1) floors at 0: the gate passes, a version is registered with alias challenger
    assert (
        main(
            [
                *tiny_run_args,
                "--out",
                str(out),
                "--floor-sem2layout",
                "0",
                "--floor-layout2sem",
                "0",
            ]
        )
        == 0
    )
    s1 = json.loads((out / "latest" / "summary.json").read_text())
    assert s1["gate_passed"] is True
    assert s1["model_version"] == "1" and s1["model_uri"] == "models:/semlayout/1"
    for direction in ("sem2layout", "layout2sem"):
        assert {"l1", "ssim", "psnr", "iou"} <= set(s1["metrics"][direction])
        assert 0.0 <= s1["metrics"][direction]["ssim"] <= 1.0
    assert (
        "ceiling" in s1["metrics"]["layout2sem"]
    ), "Layout->SEM states its ceiling beside the score"
    assert (Path(s1["checkpoint"]) / "weights.safetensors").is_file()
    assert {"ingest", "align-qc", "shard", "train", "evaluate", "track", "register"} <= set(
        s1["timings"]["steps"]
    )
    tracking = f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}"
    assert s1["mlflow"]["tracking_uri"] == tracking
    client = MlflowClient(tracking_uri=tracking)
    mv = client.get_model_version_by_alias("semlayout", "challenger")
    assert str(mv.version) == "1"
    # the drift reference of the run's training shards travels with the version
    assert mv.tags["drift_reference"] == "drift"
    logged = {a.path for a in client.list_artifacts(mv.run_id, "drift")}
    assert logged == {"drift/reference_stats.json", "drift/drift_calibration.json"}
    html = (out / "latest" / "report.html").read_text()
    assert "<html" in html.lower() and f"{s1['metrics']['sem2layout']['ssim']:.4f}" in html
    first_run = (out / "latest").resolve()
    # MLflow artifacts stay under outputs/mlflow, not ./mlruns
    assert (out / "mlflow" / "artifacts").is_dir() and not (tmp_path / "mlruns").exists()

    # 2) an absurd floor: the gate fails, nothing new is registered, the run still finishes
    assert main([*tiny_run_args, "--out", str(out), "--floor-sem2layout", "0.999"]) == 0
    s2 = json.loads((out / "latest" / "summary.json").read_text())
    assert (out / "latest").resolve() != first_run
    assert s2["gate_passed"] is False
    assert s2["model_version"] is None and s2["model_uri"] is None
    assert any("below the floor 0.9990" in r for r in s2["gate_reasons"])
    assert "register" not in s2["timings"]["steps"] and "gate-failed" in s2["timings"]["steps"]
    assert _versions(tracking, "semlayout") == ["1"]
    assert str(client.get_model_version_by_alias("semlayout", "challenger").version) == "1"
    # the failed run is still tracked (an MLflow run), just not registered
    assert (
        s2["mlflow"]["run_id"]
        and client.get_run(s2["mlflow"]["run_id"]).data.tags["gate_passed"] == "false"
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data", "/nonexistent/pairs"], "data folder not found: /nonexistent/pairs"),
        (["--data", "EMPTY"], "no pairs"),
        (["--data", "NOMANIFEST"], "manifest.csv is missing"),
        (["--config", "no-such-config"], "unknown config 'no-such-config'"),
        (["--config", "BADKEY"], "unknown key 'train.epochz'"),
        (["--n-synth", "0"], "--n-synth 0"),
        (["--floor-sem2layout", "1.5"], "expected a value in [0, 1]"),
        (["--set", "train.nope=1"], "unknown config key 'train.nope'"),
    ],
)
def test_bad_input_refused_before_first_step(tmp_path: Path, args: list[str], needle: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.csv").write_text("id,sem_path,layout_path,pattern_type\n")
    (tmp_path / "nomanifest").mkdir()
    (tmp_path / "bad.yaml").write_text("train: {epochz: 3}\n")
    (tmp_path / "good.yaml").write_text(TINY_FALLBACK)
    if "--config" not in args:
        args = [*args, "--config", str(tmp_path / "good.yaml")]
    subst = {
        "EMPTY": str(empty),
        "NOMANIFEST": str(tmp_path / "nomanifest"),
        "BADKEY": str(tmp_path / "bad.yaml"),
    }
    args = [subst.get(a, a) for a in args]
    out = tmp_path / "outputs"
    r = subprocess.run(
        [sys.executable, "-m", "semlayout_pipelines.run_local", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0]
    assert not (out / "runs").exists(), "refused before the first step: no run folder"


@pytest.mark.slow
def test_finetune_pipeline_from_the_champion_via_the_loop_launcher(
    tmp_path: Path, tiny_run_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train -> approve (champion) -> the loop's local launcher runs the fine-tune pipeline:
    reviewed pairs + replay, fine-tune of a tool / layer profile from the champion, judged on
    both test splits (the reviewed pairs with the profile); the version it registers names
    the profile and its metrics (issue 21)."""
    from mlflow.tracking import MlflowClient

    from semlayout.continual import LaunchRequest, LoopConfig
    from semlayout.data.synth import synthesize
    from semlayout.registry import Registry
    from semlayout_pipelines.launch import launcher_for
    from semlayout_pipelines.run_local import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "outputs"
    assert (
        main(
            [
                *tiny_run_args,
                "--out",
                str(out),
                "--floor-sem2layout",
                "0",
                "--floor-layout2sem",
                "0",
            ]
        )
        == 0
    )
    tracking = f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}"
    Registry(tracking).approve("semlayout", 1, by="test", reason="first model")
    reviewed = synthesize(tmp_path / "reviewed", n=12, seed=21, progress=False)
    data_dir = tiny_run_args[tiny_run_args.index("--data") + 1]
    cfg_args = tiny_run_args[tiny_run_args.index("--config") + 1 :]
    cfg = LoopConfig(
        tracking_uri=tracking,
        original_data_uri=data_dir,
        replay_n=4,
        config=cfg_args[0],
        adaptation={
            "steps": 2,
            "lr": 5e-5,
            "eval_every": 1,
            "crop_size": None,
            "profile": "tool-b",
            "adapter_rank": 2,
        },
        floors={"sem2layout": 0.0, "layout2sem": 0.0},
        tolerance=1.0,
        workdir=str(tmp_path / "loop"),
    )
    launcher = launcher_for(cfg)
    result = launcher(
        LaunchRequest(
            reviewed_dir=Path(reviewed), n_reviewed=12, cfg=cfg, run_dir=tmp_path / "loop" / "run-1"
        )
    )
    assert result.run_id and isinstance(result.gate_passed, bool)
    assert any("on the new pairs" in r for r in result.gate_reasons)
    assert any("on the original test shard" in r for r in result.gate_reasons)
    steps = set(result.details["timings"])
    assert {"ingest", "ingest-2", "shard-mix", "finetune", "evaluate-finetune", "track"} <= steps
    client = MlflowClient(tracking_uri=tracking)
    versions = sorted(str(v.version) for v in client.search_model_versions("name='semlayout'"))
    ev = json.loads(next((tmp_path / "loop").rglob("evaluate-finetune/evaluation")).read_text())
    assert ev["profile"]["name"] == "tool-b"
    new_iou = ev["new_pairs_metrics"]["sem2layout"]["iou"]
    assert ev["profile"]["metrics"]["sem2layout.iou"] == new_iou
    if result.gate_passed:
        assert result.model_version == "2" and versions == ["1", "2"]
        assert str(client.get_model_version_by_alias("semlayout", "challenger").version) == "2"
        tags = client.get_model_version("semlayout", "2").tags
        assert tags["profiles"] == "tool-b" and tags["adapted_profile"] == "tool-b"
        assert float(tags["profile.tool-b.sem2layout.iou"]) == pytest.approx(new_iou, abs=1e-4)
    else:
        assert result.model_version is None and versions == ["1"]
    # a fine-tune never moves the champion: that is the release manager's decision
    assert str(client.get_model_version_by_alias("semlayout", "champion").version) == "1"
    # the fine-tuned weights started from the champion's, with its architecture
    ft_cfg = json.loads((Path(result.details["checkpoint"]) / "config.json").read_text())["config"]
    champ_cfg = client.get_run(client.get_model_version("semlayout", "1").run_id).data.params
    assert str(ft_cfg["generator"]["image_size"]) == champ_cfg["cfg.generator.image_size"]
    assert ft_cfg["train"]["lr"] == 5e-5
    assert ft_cfg["generator"]["profiles"] == ["tool-b"]
    assert [r["step"] for r in ev["learning_curve"]] == [0, 1, 2]


def test_cli_pipeline_run_passes_options_through(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "semlayout.cli",
            "pipeline",
            "run",
            "--data",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: data folder not found: {tmp_path / 'nope'}"


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--param", "bogus=1"], "pipeline 'training' has no parameter(s) ['bogus']"),
        ([], "KFP API at http://127.0.0.1:"),
        (["--pipeline", "nope"], "unknown pipeline 'nope'"),
    ],
)
def test_cli_submit_errors_are_one_line(extra: list[str], needle: str) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "semlayout.cli",
            "pipeline",
            "submit",
            "--kfp-host",
            f"http://127.0.0.1:{port}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def test_gate_floors_are_per_direction_defaults_in_the_compiled_pipeline(compiled: dict) -> None:
    from semlayout.gate import DEFAULT_FLOORS

    params = compiled["training"][0]["root"]["inputDefinitions"]["parameters"]
    s2l = params["floor_sem2layout"]["defaultValue"]
    l2s = params["floor_layout2sem"]["defaultValue"]
    assert (s2l, l2s) == (DEFAULT_FLOORS["sem2layout"], DEFAULT_FLOORS["layout2sem"])
    # Layout->SEM is judged against a noisy SEM (ceiling ~0.5): its floor is its own, and lower
    assert 0 < l2s < s2l < 1
