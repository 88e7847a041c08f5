"""The KFP components: their specs (image, no run-time installs) and real runs of the light
steps under kfp.local's SubprocessRunner (no mocks: real files, a real moto S3 server)."""

import csv
import importlib
import json
from pathlib import Path

import helpers_servers as hs
import pytest

moto_server, s3_env, s3_bucket = hs.moto_server, hs.s3_env, hs.s3_bucket
mlflow_template_db, sqlite_tracking_uri = hs.mlflow_template_db, hs.sqlite_tracking_uri
pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")

COMPONENTS = {
    "ingest": "ingest",
    "align_qc": "align_qc",
    "shard": "shard",
    "train": "train",
    "evaluate": "evaluate",
    "track": "track",
    "register": "register",
    "gate_failed": "gate_failed",
    "shard_mix": "shard_mix",
    "finetune": "finetune",
    "evaluate_finetune": "evaluate_finetune",
    "drift_check": "drift_check",
}


@pytest.mark.parametrize("module", sorted(COMPONENTS))
def test_component_spec_uses_the_project_image_and_installs_nothing(module: str) -> None:
    from semlayout_components.catalog import steps

    # the image is chosen when the pipeline is compiled, not read from the environment on import
    comp = getattr(steps("registry.example/semlayout:test"), COMPONENTS[module])
    container = comp.component_spec.implementation.container
    assert container.image == "registry.example/semlayout:test"
    assert getattr(importlib.import_module(f"semlayout_components.{module}"), module).__name__
    command = " ".join(container.command)
    assert "pip install" not in command, "the image carries kfp and semlayout"
    assert (
        "kfp.dsl.executor_main" in command
    ), "a lightweight component (runs under SubprocessRunner)"
    # only the function's source travels: every global it reads must exist in that source alone
    import builtins
    import dis

    source = container.command[-1]
    ns: dict = {}
    exec(compile(source, "ephemeral_component.py", "exec"), ns)  # noqa: S102 - what KFP does too
    fn = ns[COMPONENTS[module]]
    missing = (
        {i.argval for i in dis.get_instructions(fn) if i.opname == "LOAD_GLOBAL"}
        - set(ns)
        - set(dir(builtins))
    )
    assert not missing, f"{module} reads module globals not shipped with it: {missing}"


def test_project_image_follows_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from semlayout import __version__
    from semlayout_components.catalog import DEFAULT_REPOSITORY, project_image

    monkeypatch.delenv("SEMLAYOUT_IMAGE", raising=False)
    assert project_image() == f"{DEFAULT_REPOSITORY}:{__version__}"
    monkeypatch.setenv("SEMLAYOUT_IMAGE", "registry.local/semlayout:dev")
    assert project_image() == "registry.local/semlayout:dev"


@pytest.fixture(scope="module")
def local_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from semlayout_pipelines.local import init_local

    root = tmp_path_factory.mktemp("kfp-root")
    init_local(root)
    return root


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from semlayout.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("pairs") / "p", n=12, seed=5, progress=False)


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_ingest_synthesises_when_no_uri(local_root: Path) -> None:
    from semlayout_components.catalog import steps

    ingest = steps().ingest

    task = ingest(data_uri="", n_synth=5, seed=2)
    pairs = task.outputs["pairs"]
    assert len(_rows(Path(pairs.path))) == 5
    assert pairs.metadata["n_pairs"] == 5 and len(pairs.metadata["content_sha256"]) == 64
    again = ingest(data_uri="", n_synth=5, seed=2).outputs["pairs"]
    assert (
        again.metadata["content_sha256"] == pairs.metadata["content_sha256"]
    ), "deterministic by seed"


def test_ingest_copies_a_local_folder_and_an_s3_folder_identically(
    local_root: Path, pairs_dir: Path, s3_bucket: str
) -> None:
    from semlayout.storage import open_store
    from semlayout_components.catalog import steps
    from semlayout_components.common import tree_sha256

    ingest = steps().ingest

    local = ingest(data_uri=str(pairs_dir), n_synth=0, seed=0).outputs["pairs"]
    assert local.metadata["content_sha256"] == tree_sha256(pairs_dir)
    open_store(f"s3://{s3_bucket}/datasets/a").upload_tree(pairs_dir)
    remote = ingest(data_uri=f"s3://{s3_bucket}/datasets/a", n_synth=0, seed=0).outputs["pairs"]
    assert remote.metadata["content_sha256"] == local.metadata["content_sha256"]
    assert remote.metadata["source"] == f"s3://{s3_bucket}/datasets/a"


@pytest.mark.parametrize("case", ["missing", "empty", "not_pairs"])
def test_ingest_refuses_bad_data(local_root: Path, tmp_path: Path, case: str) -> None:
    from semlayout_components.catalog import steps

    ingest = steps().ingest

    folder = tmp_path / case
    if case == "empty":
        folder.mkdir()
        (folder / "manifest.csv").write_text("id,sem_path,layout_path,pattern_type\n")
    elif case == "not_pairs":
        folder.mkdir()
        (folder / "readme.txt").write_text("hello")
    with pytest.raises(RuntimeError, match="FAILURE"):
        ingest(data_uri=str(folder), n_synth=0, seed=0)


def test_align_then_shard_in_a_pipeline(local_root: Path, pairs_dir: Path) -> None:
    from kfp import dsl

    from semlayout_components.catalog import steps

    align_qc = steps().align_qc
    ingest = steps().ingest
    shard = steps().shard

    @dsl.pipeline(name="align-shard")
    def p(data_uri: str) -> dsl.Dataset:
        t = ingest(data_uri=data_uri, n_synth=0, seed=0)
        a = align_qc(pairs=t.outputs["pairs"], min_pass_fraction=0.5)
        return shard(aligned=a.outputs["aligned"], val=0.2, test=0.2, seed=0).outputs["shards"]

    shards = p(data_uri=str(pairs_dir)).output
    index = json.loads((Path(shards.path) / "index.json").read_text())
    assert index["format"] == "semlayout-shards/1"
    assert (
        sum(v["n"] for v in index["splits"].values())
        == shards.metadata["splits"]["train"]
        + shards.metadata["splits"]["val"]
        + shards.metadata["splits"]["test"]
    )
    assert (Path(shards.path) / "reference_stats.json").is_file()


def test_align_qc_fails_the_step_when_too_few_pairs_pass(
    local_root: Path, tmp_path: Path, pairs_dir: Path
) -> None:
    """Pairs whose SEM is blank fail QC; with a 100% pass requirement the step fails loudly."""
    import shutil

    import cv2
    import numpy as np
    from kfp import dsl

    from semlayout.atomic import atomic_write_bytes
    from semlayout_components.catalog import steps

    align_qc = steps().align_qc
    ingest = steps().ingest

    bad = tmp_path / "bad"
    shutil.copytree(pairs_dir, bad)
    first = _rows(bad)[0]
    ok, png = cv2.imencode(".png", np.full((304, 304), 128, np.uint8))
    atomic_write_bytes(bad / first["sem_path"], png.tobytes())

    @dsl.pipeline(name="align-strict")
    def p(data_uri: str):
        t = ingest(data_uri=data_uri, n_synth=0, seed=0)
        align_qc(pairs=t.outputs["pairs"], min_pass_fraction=1.0)

    with pytest.raises(RuntimeError, match="FAILURE"):
        p(data_uri=str(bad))


def test_gate_failed_registers_nothing_and_lists_reasons(local_root: Path) -> None:
    from semlayout_components.catalog import steps

    gate_failed = steps().gate_failed

    out = gate_failed(
        gate_reasons=json.dumps(["sem2layout: ssim 0.1 is below the floor 0.6."])
    ).outputs
    assert out["version"] == "" and out["model_uri"] == ""


def test_drift_check_proceeds_without_a_store_and_when_forced(local_root: Path) -> None:
    from semlayout_components.catalog import steps

    drift_check = steps().drift_check

    out = drift_check(monitor_db="", policy="", force=False).outputs
    assert out["proceed"] is True and "caller decided" in out["reasons"]
    assert (
        drift_check(monitor_db="/nonexistent.db", policy="", force=True).outputs["proceed"] is True
    )


def test_drift_check_reads_a_real_monitor_store(local_root: Path, tmp_path: Path) -> None:
    """An empty store: no trigger fires, and the decision is recorded in the store."""
    from semlayout.monitoring.store import MonitorStore
    from semlayout_components.catalog import steps

    drift_check = steps().drift_check

    db = tmp_path / "monitor.db"
    MonitorStore(db).close()
    out = drift_check(
        monitor_db=str(db), policy=json.dumps({"min_new_pairs": 5}), force=False
    ).outputs
    assert out["proceed"] is False
    assert any("new reviewed pairs" in r for r in json.loads(out["reasons"]))
    assert MonitorStore(db).trigger_decisions(limit=5), "the decision is recorded"


def test_drift_check_makes_the_loop_checks_decision(
    local_root: Path, tmp_path: Path, tiny_pairs: Path, s3_bucket: str, sqlite_tracking_uri: str
) -> None:
    """Issue #7: the step counted API feedback only and had no promotion baseline, so S3 intake
    pairs never fired it and the SSIM-drop reasons never had a verdict. Now it is `loop check`."""
    from helpers_serving import make_checkpoint

    from semlayout.continual import check, load_loop_config
    from semlayout.data.pairs import read_gray8, read_manifest
    from semlayout.gate import GateConfig, judge
    from semlayout.intake import upload_batch
    from semlayout.monitoring.feedback import FeedbackStore
    from semlayout.monitoring.store import MonitorStore
    from semlayout.registry import Registry
    from semlayout_components.catalog import steps

    drift_check = steps().drift_check

    # the champion, promoted with SSIM 0.9 / 0.4; reviewed predictions now score far below that
    metrics = {"n": 4, "split": "test", "sem2layout": {"ssim": 0.9}, "layout2sem": {"ssim": 0.4}}
    run_id = Registry(sqlite_tracking_uri, create=True).log_run(
        "drift-check", make_checkpoint(tmp_path / "ckpt"), metrics
    )
    gate = judge(metrics, None, GateConfig(floors={"sem2layout": 0.0}))
    Registry(sqlite_tracking_uri).approve(
        "dc",
        Registry(sqlite_tracking_uri).register("dc", run_id, gate),
        by="rm",
        reason="first",
    )
    db = tmp_path / "monitor.db"
    store = MonitorStore(db)
    for i in range(6):
        store.add_ground_truth(
            f"p{i}", "sem2layout", "1", {"l1": 0.3, "ssim": 0.5, "psnr": 10.0, "iou": 0.4}
        )
    recs = read_manifest(tiny_pairs)
    fb = FeedbackStore(tmp_path / "feedback", store=store, check_alignment=False)
    for rec in recs[:2]:
        fb.add(read_gray8(rec.sem_path), read_gray8(rec.layout_path), pattern_type=rec.pattern_type)
    intake = f"s3://{s3_bucket}/intake"
    n_s3 = upload_batch(tiny_pairs, intake, skip_invalid=True).n_pairs

    policy = {"min_new_pairs": n_s3 + 2, "cooldown_minutes": 60}
    cfg = load_loop_config(
        None,
        {
            "policy": policy,
            "monitor_db": str(db),
            "intake_uri": intake,
            "feedback_uri": str(tmp_path / "feedback"),
            "tracking_uri": sqlite_tracking_uri,
            "model_name": "dc",
        },
    )
    decision, obs = check(cfg)  # before the step: a firing step starts the cooldown
    out = drift_check(
        monitor_db=str(db),
        policy=json.dumps(policy),
        force=False,
        intake_uri=intake,
        feedback_uri=str(tmp_path / "feedback"),
        mlflow_uri=sqlite_tracking_uri,
        model_name="dc",
    ).outputs
    reasons = json.loads(out["reasons"])
    assert out["proceed"] is True and decision.fire
    assert reasons == [
        r.detail for r in decision.reasons
    ], "the same decision as `semlayout loop check`"
    assert (
        obs.new_pairs_intake == n_s3 and f"2 via API feedback, {n_s3} via S3 intake" in reasons[0]
    )
    assert any(
        "rolling SSIM 0.500 over 6 reviewed predictions vs baseline 0.900" in r for r in reasons
    )
    assert MonitorStore(db).trigger_decisions(limit=1)[0]["fired"] is True


@pytest.mark.parametrize(
    "policy, key",
    [
        ('{"min_pairs": 3}', "unknown key 'policy.min_pairs'"),
        ('{"min_new_pairs": "many"}', "policy.min_new_pairs"),
    ],
)
def test_drift_check_names_a_bad_policy_key(
    local_root: Path, tmp_path: Path, capfd: pytest.CaptureFixture, policy: str, key: str
) -> None:
    from semlayout.errors import SemlayoutError
    from semlayout.monitoring.store import MonitorStore
    from semlayout_components.catalog import steps

    drift_check = steps().drift_check

    db = tmp_path / "monitor.db"
    MonitorStore(db).close()
    with pytest.raises(SemlayoutError, match=key) as err:
        drift_check.python_func(monitor_db=str(db), policy=policy, force=False)
    assert "\n" not in str(err.value)
    capfd.readouterr()
    with pytest.raises(RuntimeError, match="FAILURE"):  # the step under kfp.local: its log says why
        drift_check(monitor_db=str(db), policy=policy, force=False)
    log = "".join(capfd.readouterr())
    assert f"SemlayoutError: {err.value}" in log and "ValidationError" not in log
    assert not MonitorStore(db).trigger_decisions(limit=5), "nothing recorded"


def test_config_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from semlayout.config import resolve_config_path
    from semlayout.errors import SemlayoutError
    from semlayout_components.common import load_experiment_config

    (tmp_path / "mine.yaml").write_text("train: {epochs: 3, decay_start_epoch: 1}\n")
    monkeypatch.setenv("SEMLAYOUT_CONFIG_DIR", str(tmp_path))
    assert resolve_config_path("mine") == tmp_path / "mine.yaml"
    cfg = load_experiment_config("mine", '{"train.epochs": 5}')
    assert cfg.train.epochs == 5 and cfg.train.decay_start_epoch == 1
    with pytest.raises(SemlayoutError, match="unknown config 'nope'"):
        resolve_config_path("nope")
    with pytest.raises(SemlayoutError, match="config file not found"):
        resolve_config_path(str(tmp_path / "missing.yaml"))
    with pytest.raises(SemlayoutError, match="not valid JSON"):
        load_experiment_config("mine", "{train.epochs: 5")
