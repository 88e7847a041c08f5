"""Packaging: the built wheel works without the checkout.

The wheel is built from the repository, installed with `--no-deps` into a folder of its
own, and run from a working directory outside the repository with that folder first on
the import path: `semlayout train --config tiny` must find the config inside the package,
and the KFP layer must come along under its project-specific names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # built from a copy of the working tree: setuptools' in-tree build/ folder would keep stale
    # modules between builds (and leave one in the checkout)
    source = tmp_path_factory.mktemp("source") / "semlayout"
    shutil.copytree(
        REPO, source, symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "outputs", "*.egg-info",
                                      "__pycache__", ".*_cache"),
    )  # fmt: skip
    # no build isolation: the venv's setuptools builds it offline
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(source)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    (found,) = dist.glob("semlayout-*.whl")
    return found


@pytest.fixture(scope="module")
def site(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return target


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMLAYOUT_")}
    env["PYTHONPATH"] = str(site)
    return env


def test_the_wheel_carries_the_configs_and_the_renamed_layers(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("tiny", "small", "baseline", "improved", "loop"):
        assert f"semlayout/configs/{config}.yaml" in names
    assert any(n.startswith("semlayout_pipelines/") for n in names)
    assert any(n.startswith("semlayout_components/") for n in names)
    # /docs and /redoc work offline: their assets are inside the package
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "SOURCES.json"):
        assert f"semlayout/serving/docs_assets/{asset}" in names
    # never the generic names in site-packages
    assert not any(n.split("/")[0] in ("pipelines", "components", "configs") for n in names)
    # every package of the library is in the wheel
    packages = {p.parent.relative_to(REPO / "src").as_posix() for p in
                (REPO / "src" / "semlayout").rglob("__init__.py")}  # fmt: skip
    assert packages <= {n.rsplit("/", 1)[0] for n in names if n.endswith("__init__.py")}


def test_train_from_the_wheel_outside_the_checkout(site: Path, tmp_path: Path) -> None:
    from helpers_shards import make_pairs

    from semlayout.data.shards import write_shards

    make_pairs(tmp_path / "aligned", {"line_space": 8, "via_array": 4})
    write_shards([tmp_path / "aligned"], tmp_path / "shards", val=0.2, test=0.2, seed=0)
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = (
        "import sys, semlayout, semlayout_pipelines\n"
        "print('FROM', semlayout.__file__, semlayout_pipelines.__file__)\n"
        "from semlayout.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "train", "--config", "tiny", "--data",
         str(tmp_path / "shards"), "--out", str(tmp_path / "run"), "--no-progress"],
        cwd=work, env=_env(site), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    where = out.stdout.split("FROM", 1)[1].split()
    assert all(path.startswith(str(site)) for path in where[:2]), where
    meta = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    n_train = json.loads((tmp_path / "shards" / "index.json").read_text())["splits"]["train"]["n"]
    # tiny: one epoch of batches of 2, at most 4 steps
    assert meta["config"]["name"] == "tiny" and meta["step"] == min(4, n_train // 2) > 0


def test_the_pipeline_plugin_is_registered_from_the_wheel(site: Path, tmp_path: Path) -> None:
    code = "import sys\nfrom semlayout.cli import main\nsys.exit(main(['pipeline', '--help']))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(site),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "compile" in out.stdout and "submit" in out.stdout
