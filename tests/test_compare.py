"""The release manager's decision page: `registry compare` scores two versions on the same
pairs, and the pipeline attaches it to the challenger; MLflow runs a person can read.

Two real `semlayout pipeline run`s on different synthetic data sets (tiny config) register
v1 (approved) and v2 (compared with v1 at registration)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_browser import browser, offsite_requests, requested_urls, screenshot, wait_for

pytestmark = pytest.mark.slow

RUN = ["--config", "tiny", "--set", "train.max_steps=6", "--set", "train.log_every=2",
       "--floor-sem2layout", "0", "--floor-layout2sem", "0", "--tolerance", "1"]  # fmt: skip


def semlayout(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semlayout.cli", *args], cwd=cwd, capture_output=True, text=True,
        timeout=900, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import os

    root = tmp_path_factory.mktemp("compare")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMLAYOUT_", "MLFLOW_"))}
    env["SEMLAYOUT_CACHE_DIR"] = str(root / "cache")
    out = root / "outputs"
    uri = f"sqlite:///{out / 'mlflow' / 'mlflow.db'}"
    r1 = semlayout("pipeline", "run", "--n-synth", "24", "--seed", "0", *RUN, "--out", str(out),
                   cwd=root, env=env)  # fmt: skip
    assert r1.returncode == 0, r1.stderr + r1.stdout
    s1 = json.loads((out / "latest" / "summary.json").read_text())
    ok = semlayout("registry", "approve", "semlayout", "1", "--by", "rm", "--reason", "first",
                   "--tracking-uri", uri, cwd=root, env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    r2 = semlayout("pipeline", "run", "--n-synth", "30", "--seed", "5", *RUN, "--out", str(out),
                   cwd=root, env=env)  # fmt: skip
    assert r2.returncode == 0, r2.stderr + r2.stdout
    s2 = json.loads((out / "latest" / "summary.json").read_text())
    return {"root": root, "uri": uri, "env": env, "s1": s1, "s2": s2, "run2": r2.stdout}


def test_compare_warns_about_different_data_and_scores_both_on_the_same_pairs(two_versions):
    from semlayout.evaluation import evaluate_model
    from semlayout.registry import Registry

    t = two_versions
    page = t["root"] / "compare.html"
    r = semlayout("registry", "compare", "semlayout", "1", "2", "--json", "--html", str(page),
                  "--tracking-uri", t["uri"], cwd=t["root"], env=t["env"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["same_data"] is False and "DIFFERENT data" in res["data_note"]
    assert [s["label"] for s in res["sets"]] == ["v1's test split", "v2's test split", "union"]
    registry = Registry(t["uri"])
    tags = [registry.version("semlayout", v).tags for v in (1, 2)]
    shards = [Path(tg["lineage.shards_uri"]) for tg in tags]
    ckpts = [Path(t["s1"]["checkpoint"]), Path(t["s2"]["checkpoint"])]
    # independently: each version evaluated on v1's test split gives the A and B columns
    for i, folder in enumerate(shards):
        n = json.loads((folder / "index.json").read_text())["splits"]["test"]["n"]
        assert res["sets"][i]["n"] == n
        for col, ckpt in zip(("a", "b"), ckpts, strict=True):
            ref = evaluate_model(ckpt, folder, "test")
            for direction in ("sem2layout", "layout2sem"):
                got = res["sets"][i][direction]["ssim"][col]
                assert got == pytest.approx(ref[direction]["ssim"], abs=1e-9), (i, col)
    assert res["sets"][2]["n"] == res["sets"][0]["n"] + res["sets"][1]["n"]
    for s in res["sets"]:
        for row in s["sem2layout"].values():
            assert row["verdict"] in ("better", "worse", "within noise")
    html = page.read_text()
    assert "DIFFERENT data" in html and html.count("<img") >= 5


def test_the_page_is_attached_to_the_challenger_and_approve_says_where(two_versions):
    from semlayout.registry import Registry

    t = two_versions
    assert (
        "comparison with champion v1 attached"
        in (Path(t["s2"]["run_dir"]) / "logs" / "register.log").read_text()
    )
    page = Registry(t["uri"]).comparison("semlayout", 2)
    assert page is not None and page["against"] == 1 and Path(page["path"]).is_file()
    assert "DIFFERENT data" in Path(page["path"]).read_text()
    args = ["approve", "semlayout", "2", "--by", "rm", "--reason", "x", "--dry-run"]
    dry = semlayout("registry", *args, "--tracking-uri", t["uri"], cwd=t["root"], env=t["env"])
    assert dry.returncode == 0 and "would become champion" in dry.stdout
    assert page["path"] in dry.stdout
    assert Registry(t["uri"]).champion_version("semlayout") == 1  # dry run: nothing changed
    desc = Registry(t["uri"]).version("semlayout", 2).description
    assert "Compared with v1" in desc and "Audit trail" in desc and "**registered**" in desc


def test_show_puts_the_champion_on_the_same_pairs_beside_the_version(two_versions):
    t = two_versions
    r = semlayout("registry", "show", "semlayout", "2", "--tracking-uri", t["uri"],
                  cwd=t["root"], env=t["env"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "scored on this version's test pairs" in r.stdout
    assert "Downloading" not in r.stdout + r.stderr  # no progress bars
    gate = json.loads(
        semlayout(
            "registry",
            "show",
            "semlayout",
            "2",
            "--json",
            "--tracking-uri",
            t["uri"],
            cwd=t["root"],
            env=t["env"],
        ).stdout  # fmt: skip
    )
    judged = gate["gate"]["judged"]["sem2layout"]["champion"]
    assert gate["champion_metrics"]["sem2layout"]["ssim"] == pytest.approx(judged)


def test_mlflow_runs_are_readable(two_versions):
    from mlflow import MlflowClient

    t = two_versions
    c = MlflowClient(t["uri"])
    run = c.get_run(t["s2"]["mlflow"]["run_id"])
    # the data set named as ingest records it (the share drawn in reversed contrast included)
    assert run.info.run_name.startswith("training · synth n=30,seed=5,reverse_fraction=0.25 (")
    assert {i.tags[0].value for i in run.inputs.dataset_inputs} == {"training", "test"}
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "train/loss_G")]
    assert steps == [2, 4, 6]
    names = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert "report.html" in names and "champion_metrics.json" in names
    train_s = t["s2"]["timings"]["steps"]["train"]["seconds"]
    duration = (run.info.end_time - run.info.start_time) / 1000
    assert 0 < duration <= train_s  # the training's, not the tracking step's
    per_family_baseline = [k for k in run.data.metrics if ".baseline_otsu.per_family." in k]
    assert not per_family_baseline


def test_the_compare_page_in_a_browser_with_no_network(two_versions):
    t = two_versions
    page = t["root"] / "compare.html"
    if not page.is_file():
        semlayout("registry", "compare", "semlayout", "1", "2", "--html", str(page),
                  "--tracking-uri", t["uri"], cwd=t["root"], env=t["env"])  # fmt: skip
    with browser(1300, 1600) as driver:
        driver.get(page.as_uri())
        n = wait_for(driver, "document.images.length")
        decoded = driver.execute_script(
            "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length"
        )
        warning = driver.find_element("id", "data-note").text
        urls = requested_urls(driver)
        screenshot(driver, "compare")
    assert n >= 5 and decoded == n
    assert "DIFFERENT data" in warning
    assert not [u for u in offsite_requests(urls) if not u.startswith("file://")]


def test_the_report_in_a_browser_with_no_network(two_versions):
    """The run's report.html (or, for the docs picture, the report of a real `make run` named
    by $SEMLAYOUT_SCREENSHOT_REPORT): every image decodes, nothing is fetched from elsewhere."""
    import os

    report = Path(os.environ.get("SEMLAYOUT_SCREENSHOT_REPORT") or
                  Path(two_versions["s2"]["run_dir"]) / "report.html")  # fmt: skip
    with browser(1300, 1600) as driver:
        driver.get(report.resolve().as_uri())
        n = wait_for(driver, "document.images.length")
        decoded = driver.execute_script(
            "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length"
        )
        text = driver.execute_script("return document.body.innerText")
        urls = requested_urls(driver)
        screenshot(driver, "report")
    assert n >= 8 and decoded == n
    assert "Promotion gate" in text and "ceiling" in text
    assert not [u for u in offsite_requests(urls) if not u.startswith("file://")]
