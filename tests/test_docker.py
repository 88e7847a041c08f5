"""Images: the Dockerfile's contract with KFP and k8s (always), and a real build + a real
component run inside the image (marked `docker`; `make docker-test` or SEMLAYOUT_DOCKER_BUILD=1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()


def _stage(name: str) -> str:
    m = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.S | re.M)
    assert m, f"no stage {name}"
    return m.group(1)


def _req_name(line: str) -> str:
    return re.split(r"[<>=!\[;~ ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_scripts_parse() -> None:
    for script in ("build.sh", "test.sh"):
        r = subprocess.run(
            ["bash", "-n", str(REPO / "docker" / script)], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr


def test_base_image_is_a_build_arg_with_a_production_default() -> None:
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", DOCKERFILE, re.M)
    assert "FROM ${BASE_IMAGE} AS base" in DOCKERFILE


def test_train_image_lets_kfp_set_the_command() -> None:
    train = _stage("train")
    assert not re.search(
        r"^ENTRYPOINT", train, re.M
    ), "KFP (and kfp.local's DockerRunner) set the container command"
    assert "load_config('small')" in train, "config names resolve inside the installed package"
    build = _stage("train-build")
    assert "COPY components" in build and "COPY pipelines" in build and "COPY configs" not in train
    # only the venv leaves the build stage: no wheels or sources in the final layers
    assert "COPY --from=train-build /opt/venv /opt/venv" in train and "wheels" not in train
    assert (
        "import semlayout, semlayout_components, semlayout_pipelines, kfp" in train
    ), "the build checks its own imports"
    assert re.search(r"^USER 10001", train, re.M), "non-root, as the k8s securityContext expects"


def test_serve_image_matches_the_k8s_deployment() -> None:
    import yaml

    serve = _stage("serve")
    assert "COPY --from=serve-build /opt/venv /opt/venv" in serve and "wheels" not in serve
    assert "kfp" not in (REPO / "docker" / "requirements-serve.txt").read_text()
    assert 'ENTRYPOINT ["semlayout"]' in serve
    assert re.search(r"^EXPOSE 8000", serve, re.M)
    assert re.search(r"^USER 10001", serve, re.M)
    deploy = yaml.safe_load_all((REPO / "k8s" / "base" / "serving.yaml").read_text())
    dep = next(d for d in deploy if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in c and c["args"][0] == "serve", "the image's ENTRYPOINT runs semlayout"
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001


def test_serving_requirements_are_a_slim_subset() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    project = {_req_name(d) for d in deps}
    serve = {
        _req_name(line)
        for line in (REPO / "docker" / "requirements-serve.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert serve <= project, f"not project dependencies: {serve - project}"
    assert not serve & {
        "kfp",
        "kfp-kubernetes",
        "evidently",
        "gdstk",
        "torch",
    }, "slim: no pipeline stack"
    assert {"fastapi", "uvicorn", "onnxruntime", "mlflow", "prometheus-client"} <= serve


@pytest.mark.docker
@pytest.mark.slow
def test_build_images_and_run_a_component_inside(tmp_path: Path) -> None:
    if os.environ.get("SEMLAYOUT_DOCKER_BUILD") != "1":
        pytest.skip(
            "image builds take minutes: run `make docker-test` or set SEMLAYOUT_DOCKER_BUILD=1"
        )
    if shutil.which("docker") is None:
        pytest.skip("no docker client")
    env = {**os.environ, "OUT": str(tmp_path)}
    r = subprocess.run(
        ["bash", str(REPO / "docker" / "test.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    if r.returncode == 77:
        pytest.skip(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["component_check"]["identical"] is True
    assert report["component_check"]["files"] > 3
    assert set(report["images"]) == {"train", "serve"}
    assert report["images"]["serve"]["size_mib"] < report["images"]["train"]["size_mib"]
