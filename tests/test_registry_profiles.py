"""Issue 21: a version says what it was adapted to. A real profile fine-tune (`adapt` with a
profile) is judged with that profile on the reviewed pairs (`finetune_eval`), registered in a
real SQLite MLflow registry with its profiles, polarities and per-profile metrics as tags,
shown by `semlayout registry show`, and served from the registry by a real server whose alias
moves onto it (the reload brings the profile)."""

from __future__ import annotations

from pathlib import Path

import helpers_servers as hs
import httpx
import numpy as np
import pytest
from helpers_serving import running_server
from test_profiles import _adapt, _champion

from semlayout.cli import main as cli_main
from semlayout.data.pairs import encode_png
from semlayout.registry import Registry

sqlite_tracking_uri, mlflow_template_db = hs.sqlite_tracking_uri, hs.mlflow_template_db
PROFILE = "tool-b"
ADMIN = "profiles-admin-token"


@pytest.fixture
def uri(sqlite_tracking_uri, tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("SEMLAYOUT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return sqlite_tracking_uri


@pytest.fixture(scope="module")
def finetuned(tiny_aligned: Path, tiny_shards: Path, tmp_path_factory) -> dict:
    """A champion, its profile fine-tune on reviewed pairs, and the fine-tune's evaluation."""
    from semlayout.data.shards import write_shards
    from semlayout.finetune_eval import evaluate_pair_of_models

    tmp_path = tmp_path_factory.mktemp("profile-finetune")
    champ = _champion(tmp_path)
    reviewed = tmp_path / "reviewed"
    write_shards(tiny_aligned, reviewed, val=0.0, test=0.25, seed=0, shard_size=16)
    cand = _adapt(champ, reviewed, tmp_path / "out", tiny_shards, PROFILE, 2)
    evals = evaluate_pair_of_models(cand, champ, reviewed, tiny_shards, 0, profile=PROFILE)
    shared = evaluate_pair_of_models(cand, champ, reviewed, tiny_shards, 0)
    return {"champ": champ, "cand": cand, "evals": evals, "shared": shared}


def test_the_evaluation_judges_the_new_pairs_with_the_profile(finetuned):
    ev, shared = finetuned["evals"], finetuned["shared"]
    # the candidate's shared network is the champion's: without the profile, the same scores
    assert shared["new"]["sem2layout"]["ssim"] == shared["new_champion"]["sem2layout"]["ssim"]
    # with it, the profile answers the reviewed pairs (the champion never learned it)
    assert ev["new"]["sem2layout"]["ssim"] != ev["new_champion"]["sem2layout"]["ssim"]
    assert ev["new_champion"]["sem2layout"]["ssim"] == shared["new_champion"]["sem2layout"]["ssim"]
    assert ev["orig"]["sem2layout"]["ssim"] == ev["orig_champion"]["sem2layout"]["ssim"]


def test_a_registered_profile_finetune_names_its_profile_and_metrics(
    finetuned, uri, tmp_path, capsys
):
    from semlayout.evaluation import metrics_json_ready
    from semlayout.finetune_eval import judge_evaluations
    from semlayout.gate import gate_config
    from semlayout.registry.profile_tags import profile_record

    ev = finetuned["evals"]
    new, new_champ = metrics_json_ready(ev["new"]), metrics_json_ready(ev["new_champion"])
    gate = judge_evaluations(ev, gate_config(floors={"sem2layout": 0.0, "layout2sem": 0.0}))
    registry = Registry(uri, create=True)
    champ_run = registry.log_run("exp", finetuned["champ"], metrics_json_ready(ev["orig_champion"]))
    v1 = registry.register("m", champ_run, gate)
    run_id = registry.log_run("exp", finetuned["cand"], metrics_json_ready(ev["orig"]))
    record = profile_record(PROFILE, new, new_champ)
    v2 = registry.register("m", run_id, gate, profile=record)

    tags = registry.client.get_model_version("m", str(v2)).tags
    assert tags["profiles"] == PROFILE and tags["adapted_profile"] == PROFILE
    assert tags["polarities"] == "+1"
    iou = float(tags[f"profile.{PROFILE}.sem2layout.iou"])
    assert iou == pytest.approx(new["sem2layout"]["iou"], abs=1e-4)
    champ_ssim = float(tags[f"profile.{PROFILE}.champion.sem2layout.ssim"])
    assert champ_ssim == pytest.approx(new_champ["sem2layout"]["ssim"], abs=1e-4)
    assert int(tags[f"profile.{PROFILE}.n_pairs"]) == new["n"]
    v1_tags = registry.client.get_model_version("m", str(v1)).tags
    assert "profiles" not in v1_tags and "adapted_profile" not in v1_tags

    shown = registry.show("m", v2)["adaptation"]
    assert shown["profiles"] == [PROFILE] and shown["adapted_profile"] == PROFILE
    block = shown["profile_metrics"][PROFILE]
    assert block["metrics"]["sem2layout.iou"] == pytest.approx(iou)
    assert block["champion"]["sem2layout.ssim"] == pytest.approx(champ_ssim)
    assert registry.show("m", v1)["adaptation"]["profiles"] == []

    assert cli_main(["registry", "show", "m", str(v2), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"profiles: {PROFILE}" in out and f"adapted profile: {PROFILE}" in out
    lines = out.splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith(f"profile {PROFILE} ("))
    line = next(x for x in lines[at:] if x.strip().startswith("sem2layout.iou"))
    delta = iou - float(tags[f"profile.{PROFILE}.champion.sem2layout.iou"])
    assert f"{iou:.4f}" in line and f"{delta:+.4f}" in line

    # served from the registry: the alias moves onto the fine-tune, the reload brings its profile
    from semlayout.serving.app import create_app
    from semlayout.serving.settings import ServeSettings

    registry.client.set_registered_model_alias("m", "champion", str(v1))
    settings = ServeSettings(
        model="models:/m@champion",
        tracking_uri=uri,
        monitor_db=tmp_path / "monitor.db",
        feedback_dir=tmp_path / "feedback",
        poll_interval_s=0,
        admin_token=ADMIN,
    )
    sem = np.random.default_rng(5).integers(0, 256, (32, 32), dtype=np.uint8)
    files = {"image": ("x.png", encode_png(sem), "image/png")}
    params = {"layer": PROFILE, "polarity": "bright"}
    with running_server(create_app(settings)) as url:
        assert httpx.get(f"{url}/readyz", timeout=30).json()["profiles"] == []
        r = httpx.post(f"{url}/v1/translate/sem2layout", params=params, files=files, timeout=60)
        assert r.headers["X-Profile"] == "none" and r.headers["X-Model-Version"] == str(v1)
        registry.client.set_registered_model_alias("m", "champion", str(v2))
        auth = {"Authorization": f"Bearer {ADMIN}"}
        r = httpx.post(f"{url}/v1/admin/reload", headers=auth, timeout=120)
        assert r.status_code == 200 and r.json()["changed"], r.text
        assert httpx.get(f"{url}/readyz", timeout=30).json()["profiles"] == [PROFILE]
        r = httpx.post(f"{url}/v1/translate/sem2layout", params=params, files=files, timeout=60)
        assert r.headers["X-Profile"] == PROFILE and r.headers["X-Model-Version"] == str(v2)
