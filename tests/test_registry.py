"""MLflow registry: logging, gated registration, approval / rejection / rollback with audit tags,
`models:/` resolution and the pyfunc wrapper -- against a real SQLite registry and a real
`mlflow server` process."""

from __future__ import annotations

import json
from pathlib import Path

import helpers_servers as hs
import numpy as np
import pytest

from semlayout.cli import main as cli_main
from semlayout.errors import SemlayoutError
from semlayout.gate import GateConfig, judge
from semlayout.registry import Registry

mlflow_server, sqlite_tracking_uri, mlflow_template_db = (
    hs.mlflow_server,
    hs.sqlite_tracking_uri,
    hs.mlflow_template_db,
)
moto_server = hs.moto_server

CFG = GateConfig(floors={"sem2layout": 0.5, "layout2sem": 0.2}, tolerance=0.01)


def _metrics(s2l: float, l2s: float) -> dict:
    return {
        "n": 6,
        "split": "test",
        "sem2layout": {
            "l1": 0.1,
            "ssim": s2l,
            "psnr": 20.0,
            "iou": 0.8,
            "per_family": {"line_space": {"ssim": s2l, "n": 6}},
        },
        "layout2sem": {"l1": 0.2, "ssim": l2s, "psnr": 15.0, "iou": 0.5, "ceiling": {"ssim": 0.45}},
    }


def make_checkpoint(dest: Path, seed: int = 0) -> Path:
    import torch

    from semlayout.config import config_from_dict
    from semlayout.train.checkpoint import build_networks, save_checkpoint

    torch.manual_seed(seed)
    cfg = config_from_dict(
        {
            "name": "registry-test",
            "generator": {
                "image_size": 32,
                "n_down": 3,
                "base_filters": 4,
                "max_filters": 8,
                "dropout_blocks": 1,
            },
            "discriminator": {"base_filters": 4, "n_layers": 2},
        }
    )
    return save_checkpoint(dest, cfg, build_networks(cfg), step=7, epoch=1)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("ckpts")
    return [make_checkpoint(base / f"c{i}", seed=i) for i in range(3)]


@pytest.fixture
def uri(sqlite_tracking_uri, tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("SEMLAYOUT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return sqlite_tracking_uri


def _register(
    uri: str, ckpt: Path, s2l: float, l2s: float, name: str = "semlayout", champ=None
) -> int:
    metrics = _metrics(s2l, l2s)
    registry = Registry(uri, create=True)
    run_id = registry.log_run("exp", ckpt, metrics, params={"seed": 0, "data": {"n": 6}})
    gate = judge(metrics, champ, CFG)
    return registry.register(
        name,
        run_id,
        gate,
        lineage={"data_uri": "s3://b/pairs", "data_hash": "abc123", "pipeline_run_id": "p-1"},
    )


def _aliases(uri: str, name: str = "semlayout") -> dict:
    return Registry(uri).show(name)["aliases"]


def test_log_training_run_flattens_params_metrics_and_logs_the_model(uri, ckpts):
    import mlflow

    registry = Registry(uri, create=True)
    run_id = registry.log_run(
        "exp",
        ckpts[0],
        _metrics(0.9, 0.3),
        params={"seed": 3, "data": {"n": 6}},
        tags={"who": "test"},
    )
    c = mlflow.MlflowClient(uri)
    run = c.get_run(run_id)
    assert run.data.metrics["sem2layout.ssim"] == 0.9
    assert run.data.metrics["sem2layout.per_family.line_space.ssim"] == 0.9
    assert run.data.metrics["layout2sem.ceiling.ssim"] == 0.45
    assert run.data.params["seed"] == "3" and run.data.params["data.n"] == "6"
    assert run.data.params["cfg.generator.image_size"] == "32"
    assert run.data.tags["who"] == "test" and len(run.data.tags["semlayout.config_hash"]) == 64
    names = {a.path for a in c.list_artifacts(run_id)}
    assert {"metrics.json", "config.json"} <= names
    # artifacts stay beside the database, not in the cwd
    assert (Path(uri[len("sqlite:///") :]).parent / "artifacts").is_dir()
    with pytest.raises(SemlayoutError, match="not a checkpoint folder"):
        registry.log_run("exp", ckpts[0].parent, _metrics(0.9, 0.3))


def test_register_approve_rollback_with_audit_trail(uri, ckpts):
    v1 = _register(uri, ckpts[0], 0.80, 0.30)
    assert v1 == 1 and _aliases(uri) == {"challenger": 1}
    reg = Registry(uri)
    tags = reg.show("semlayout", 1)
    assert (
        tags["lineage"]["data_uri"] == "s3://b/pairs" and tags["lineage"]["data_hash"] == "abc123"
    )
    assert len(tags["lineage"]["config_hash"]) == 64 and tags["lineage"]["git_commit"]
    assert tags["gate_passed"] is True and tags["gate"]["judged"]["sem2layout"]["value"] == 0.80
    assert reg.champion_version("semlayout") is None and reg.champion_metrics("semlayout") is None

    reg.approve("semlayout", 1, by="alice", reason="first model")
    assert _aliases(uri) == {"champion": 1}
    assert reg.champion_version("semlayout") == 1
    assert reg.champion_metrics("semlayout")["sem2layout"]["ssim"] == 0.80

    v2 = _register(uri, ckpts[1], 0.85, 0.31, champ=reg.champion_metrics("semlayout"))
    assert v2 == 2 and _aliases(uri) == {"champion": 1, "challenger": 2}
    reg.approve("semlayout", 2, by="bob", reason="better s2l")
    assert _aliases(uri) == {"champion": 2, "previous-champion": 1}
    info = reg.show("semlayout", 2)
    assert (
        info["decision"]["approved_by"] == "bob"
        and info["decision"]["approval_reason"] == "better s2l"
    )
    assert info["champion_metrics"] is None  # it is the champion itself
    assert [e["action"] for e in info["audit_log"]] == ["registered", "challenger", "approved"]
    assert info["audit_log"][-1]["previous_champion"] == 1

    r = reg.rollback("semlayout", by="carol", reason="regression in prod")
    assert r == {**r, "champion": 1, "rolled_back": 2, "previous_champion": None}
    assert _aliases(uri) == {"champion": 1}
    info2 = reg.show("semlayout", 2)
    assert info2["decision"]["rolled_back_by"] == "carol" and info2["status"] == "rolled back"
    assert info2["audit_log"][-1]["action"] == "rollback"
    model = reg.show("semlayout")
    assert [e["action"] for e in model["audit_log"]] == [
        "registered",
        "challenger",
        "approved",
        "registered",
        "challenger",
        "approved",
        "rollback",
    ]
    assert model["champion_history"] == [1]
    with pytest.raises(SemlayoutError, match="no previous-champion"):
        reg.rollback("semlayout", by="carol", reason="again")


def test_rollback_walks_back_through_history(uri, ckpts):
    reg = Registry(uri)
    for i in range(3):
        v = _register(uri, ckpts[i], 0.8 + 0.01 * i, 0.3)
        reg.approve("semlayout", v, by="a", reason=f"r{i}")
    assert _aliases(uri) == {"champion": 3, "previous-champion": 2}
    reg.rollback("semlayout", by="b", reason="bad v3")
    assert _aliases(uri) == {"champion": 2, "previous-champion": 1}
    reg.rollback("semlayout", by="b", reason="bad v2")
    assert _aliases(uri) == {"champion": 1}
    # a rolled-back version may be approved again deliberately
    reg.approve("semlayout", 3, by="a", reason="fixed data issue")
    assert _aliases(uri) == {"champion": 3, "previous-champion": 1}


def test_refusals(uri, ckpts):
    v1 = _register(uri, ckpts[0], 0.40, 0.30)  # below the 0.5 floor
    assert _aliases(uri) == {}
    reg = Registry(uri)
    assert reg.show("semlayout", v1)["gate_passed"] is False
    with pytest.raises(SemlayoutError, match="failed the gate"):
        reg.approve("semlayout", v1, by="alice", reason="please")
    assert "approved_by" not in reg.show("semlayout", v1)["decision"]
    v2 = _register(uri, ckpts[1], 0.80, 0.30)
    reg.approve("semlayout", v2, by="alice", reason="ok")
    with pytest.raises(SemlayoutError, match="already the champion"):
        reg.approve("semlayout", v2, by="alice", reason="twice")
    with pytest.raises(SemlayoutError, match="version 9"):
        reg.approve("semlayout", 9, by="alice", reason="x")
    with pytest.raises(SemlayoutError, match="'nope'"):
        reg.approve("nope", 1, by="alice", reason="x")
    with pytest.raises(SemlayoutError, match="positive integer"):
        reg.approve("semlayout", "abc", by="alice", reason="x")
    with pytest.raises(SemlayoutError, match="--by"):
        reg.approve("semlayout", v1, by=" ", reason="x")
    with pytest.raises(SemlayoutError, match="rollback"):
        reg.reject("semlayout", v2, by="alice", reason="x")


def test_reject_removes_challenger_and_blocks_approval(uri, ckpts):
    v = _register(uri, ckpts[0], 0.80, 0.30)
    assert _aliases(uri) == {"challenger": v}
    reg = Registry(uri)
    r = reg.reject("semlayout", v, by="dave", reason="artefacts on vias")
    assert r["challenger_removed"] and _aliases(uri) == {}
    info = reg.show("semlayout", v)
    assert (
        info["status"] == "rejected" and info["decision"]["rejection_reason"] == "artefacts on vias"
    )
    with pytest.raises(SemlayoutError, match="rejected"):
        reg.approve("semlayout", v, by="erin", reason="x")


def test_resolve_model_uri_downloads_the_checkpoint_and_caches_it(uri, ckpts, tmp_path):
    v1 = _register(uri, ckpts[0], 0.80, 0.30)
    reg = Registry(uri)
    reg.approve("semlayout", v1, by="a", reason="r")
    path = reg.resolve("models:/semlayout@champion")
    for name in ("config.json", "weights.safetensors"):
        assert (path / name).read_bytes() == (ckpts[0] / name).read_bytes()
    assert str(path).startswith(str(tmp_path / "cache"))
    mtime = (path / "weights.safetensors").stat().st_mtime_ns
    assert reg.resolve("models:/semlayout/1") == path
    assert (path / "weights.safetensors").stat().st_mtime_ns == mtime  # not downloaded again
    # the alias is resolved on every call: it follows approvals
    v2 = _register(uri, ckpts[1], 0.85, 0.30)
    reg.approve("semlayout", v2, by="a", reason="r")
    path2 = reg.resolve("models:/semlayout@champion")
    assert (
        path2 != path
        and (path2 / "weights.safetensors").read_bytes()
        == (ckpts[1] / "weights.safetensors").read_bytes()
    )
    # a plain folder passes through
    assert Registry.local_checkpoint(str(ckpts[2])) == ckpts[2]
    for bad, match in [
        ("models:/semlayout@nope", "alias 'nope'"),
        ("models:/missing@champion", "'missing'"),
        ("models:/semlayout/7", "version 7"),
        ("models:/", "not valid"),
        (str(tmp_path / "none"), "not found"),
    ]:
        with pytest.raises(SemlayoutError, match=match):
            Registry.local_checkpoint(bad, uri)


def test_pyfunc_from_the_registry_predicts_like_the_checkpoint(uri, ckpts):
    import base64

    import mlflow
    import pandas as pd

    from semlayout.data.pairs import decode_gray8, encode_png
    from semlayout.inference import Translator

    v = _register(uri, ckpts[0], 0.80, 0.30)
    reg = Registry(uri)
    reg.approve("semlayout", v, by="a", reason="r")
    with reg.scoped():
        model = mlflow.pyfunc.load_model("models:/semlayout@champion")
        local = Path(mlflow.artifacts.download_artifacts("models:/semlayout/1"))
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (40, 40), dtype=np.uint8),
        rng.integers(0, 256, (32, 32), dtype=np.uint8),
    ]
    ref = Translator.load(ckpts[0])
    for direction in ("sem2layout", "layout2sem"):
        got = model.predict({"direction": direction, "images": images})
        want = ref.translate(direction, images)
        assert len(got) == 2
        for g, w, im in zip(got, want, images, strict=True):
            assert g.shape == im.shape and g.dtype == np.uint8
            np.testing.assert_array_equal(g, w)
    df = pd.DataFrame(
        {
            "direction": ["sem2layout"],
            "image_png_b64": [base64.b64encode(encode_png(images[0])).decode()],
        }
    )
    out = model.predict(df)
    np.testing.assert_array_equal(
        decode_gray8(base64.b64decode(out["image_png_b64"][0])),
        ref.translate("sem2layout", images[:1])[0],
    )
    # the model was logged as code: no pickle inside
    assert (
        not list(local.rglob("*.pkl")) and "python_model.pkl" not in (local / "MLmodel").read_text()
    )


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli_main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_release_manager_flow(uri, ckpts, capsys):
    _register(uri, ckpts[0], 0.80, 0.30)
    _register(uri, ckpts[1], 0.40, 0.30)  # failed gate
    t = ["--tracking-uri", uri]
    code, out, _ = _cli(["registry", "list", *t], capsys)
    assert code == 0 and "semlayout" in out
    code, out, _ = _cli(["registry", "list", "--json", *t], capsys)
    assert json.loads(out)[0] == {
        "name": "semlayout",
        "versions": 2,
        "latest": 2,
        "champion": None,
        "challenger": 1,
        "previous_champion": None,
    }
    code, out, err = _cli(
        ["registry", "approve", "semlayout", "2", "--by", "al", "--reason", "r", *t], capsys
    )
    assert code == 2 and err.strip().count("\n") == 0 and "failed the gate" in err
    code, out, _ = _cli(
        ["registry", "approve", "semlayout", "1", "--by", "al", "--reason", "ok", *t], capsys
    )
    assert code == 0 and "v1 is now champion" in out
    code, out, err = _cli(
        ["registry", "approve", "semlayout", "1", "--by", "al", "--reason", "ok", *t], capsys
    )
    assert code == 2 and "already the champion" in err
    code, out, _ = _cli(["registry", "show", "semlayout", "1", *t], capsys)
    assert (
        code == 0
        and "gate: PASSED" in out
        and "approved_by: al" in out
        and "data_hash: abc123" in out
    )
    assert "sem2layout.ssim" in out and "0.8000" in out
    code, out, _ = _cli(["registry", "show", "semlayout", "2", "--json", *t], capsys)
    info = json.loads(out)
    assert info["gate_passed"] is False and info["champion_metrics"]["sem2layout"]["ssim"] == 0.80
    code, out, _ = _cli(["registry", "show", "semlayout", *t], capsys)
    assert code == 0 and "approved" in out and "by al: ok" in out
    code, out, _ = _cli(
        ["registry", "reject", "semlayout", "2", "--by", "al", "--reason", "bad", *t], capsys
    )
    assert code == 0
    code, _, err = _cli(
        ["registry", "rollback", "semlayout", "--by", "al", "--reason", "x", *t], capsys
    )
    assert code == 2 and "no previous-champion" in err
    code, _, err = _cli(["registry", "show", "nope", *t], capsys)
    assert code == 2 and "'nope'" in err
    code, _, err = _cli(
        ["registry", "list", "--tracking-uri", f"http://127.0.0.1:{hs.free_port()}"], capsys
    )
    assert code == 2 and "cannot reach" in err
    code, _, err = _cli(
        ["registry", "list", "--tracking-uri", "sqlite:////nonexistent/x.db"], capsys
    )
    assert code == 2 and "no MLflow registry" in err


def test_champion_lookups_on_a_first_run_and_an_unreachable_server(tmp_path):
    # the training pipeline asks for the champion before anything was ever registered
    missing = f"sqlite:///{tmp_path / 'never' / 'mlflow.db'}"
    assert Registry.existing(missing) is None  # so: no champion version, no champion metrics
    assert not (tmp_path / "never").exists()
    # ... but a server that does not answer must not look like "no champion" (the gate would
    # skip it)
    down = f"http://127.0.0.1:{hs.free_port()}"
    with pytest.raises(SemlayoutError, match="cannot reach"):
        Registry.existing(down)


@pytest.mark.slow
def test_client_server_path(mlflow_server, ckpts, tmp_path, monkeypatch, capsys):
    """The same flow through a real `mlflow server` (proxied artifacts over HTTP)."""
    monkeypatch.setenv("SEMLAYOUT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # the CLI's default source
    name = f"srv-{tmp_path.name[-12:]}".replace("_", "-")
    v1 = _register(mlflow_server, ckpts[0], 0.80, 0.30, name=name)
    reg = Registry(mlflow_server)
    reg.approve(name, v1, by="alice", reason="first")
    v2 = _register(mlflow_server, ckpts[1], 0.85, 0.30, name=name, champ=reg.champion_metrics(name))
    code, out, _ = _cli(
        ["registry", "approve", name, str(v2), "--by", "bob", "--reason", "better"], capsys
    )
    assert code == 0, out
    assert reg.show(name)["aliases"] == {"champion": v2, "previous-champion": v1}
    path = reg.resolve(f"models:/{name}@champion")
    assert (path / "weights.safetensors").read_bytes() == (
        ckpts[1] / "weights.safetensors"
    ).read_bytes()
    reg.rollback(name, by="carol", reason="prod regression")
    assert reg.champion_version(name) == v1
    assert any(m["name"] == name and m["champion"] == v1 for m in reg.list_models())
    code, out, _ = _cli(["registry", "show", name], capsys)
    assert code == 0 and "rollback" in out and "carol" in out


@pytest.mark.slow
def test_server_with_s3_artifacts(moto_server, ckpts, tmp_path, monkeypatch):
    """Production shape: mlflow server with its artifact store on S3 (moto), clients over HTTP
    only."""
    monkeypatch.setenv("SEMLAYOUT_CACHE_DIR", str(tmp_path / "cache"))
    bucket = "mlflow-artifacts-test"
    hs.s3_client(moto_server).create_bucket(Bucket=bucket)
    env = {**hs.S3_TEST_ENV, "MLFLOW_S3_ENDPOINT_URL": moto_server}
    with hs.start_mlflow_server(
        tmp_path / "srv", artifacts_destination=f"s3://{bucket}/mlflow", env=env
    ) as url:
        v = _register(url, ckpts[2], 0.8, 0.3, name="s3model")
        reg = Registry(url)
        reg.approve("s3model", v, by="alice", reason="s3 artifacts")
        path = reg.resolve("models:/s3model@champion")
    assert (path / "weights.safetensors").read_bytes() == (
        ckpts[2] / "weights.safetensors"
    ).read_bytes()
    keys = [o["Key"] for o in hs.s3_client(moto_server).list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.endswith("checkpoint/weights.safetensors") for k in keys)
    assert any(k.endswith("metrics.json") for k in keys)


def test_model_level_audit_log_keeps_the_newest_events_within_the_tag_limit():
    from semlayout.registry.audit_tags import MODEL_TAG_LIMIT, fit_list

    events = [
        {
            "at": f"2026-11-24T00:00:{i:02d}Z",
            "action": "approved",
            "version": i,
            "by": "x" * 40,
            "reason": "r" * 80,
        }
        for i in range(60)
    ]
    text = fit_list(events, MODEL_TAG_LIMIT)
    kept = json.loads(text)
    assert len(text) <= MODEL_TAG_LIMIT and 0 < len(kept) < 60
    assert kept[-1]["version"] == 59 and kept == events[-len(kept) :]


def test_concurrent_resolves_share_one_complete_download(uri, ckpts):
    from concurrent.futures import ThreadPoolExecutor

    v = _register(uri, ckpts[0], 0.8, 0.3)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: Registry(uri).resolve(f"models:/semlayout/{v}"), range(4)))
    assert len(set(paths)) == 1
    assert (paths[0] / "weights.safetensors").read_bytes() == (
        ckpts[0] / "weights.safetensors"
    ).read_bytes()
    assert not [
        p for p in paths[0].parent.parent.iterdir() if p.name.startswith(".")
    ]  # no temp leftovers
    # the global MLflow URI is left as it was (no leak between threads)
    import os

    assert "MLFLOW_TRACKING_URI" not in os.environ
