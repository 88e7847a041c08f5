"""Every shell command in the README that can run here is run here.

- ```sh blocks run as written (bash -euo pipefail, one script per block) in a sandbox folder
  holding what they act on: a registry with two versions from two `make run`s on different
  data (v1 approved, so v2 comes with its comparison page), reviewed pairs and a real S3 API
  (moto's server) for the data engineer, the server the Serving block starts (in the
  background) for the fab engineer and the loop. The one substitution: the server's port
  (`8000` -> a free port), so parallel test runs do not collide.
- ```text blocks need what this machine does not have (a Kubernetes cluster, a KFP server)
  or are CI itself (`make test`): their `semlayout` commands are checked against the command
  line (the command exists, every option exists), their `make` targets against the Makefile,
  and the `kubectl kustomize` half of a pipe is run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import helpers_servers as hs
import httpx
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
moto_server = hs.moto_server
MAKE_ARGS = ("--config tiny --set train.max_steps=4 --floor-sem2layout 0 --floor-layout2sem 0 "
             "--tolerance 1")  # fmt: skip


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [c.split("  #")[0].strip() for c in joined.splitlines() if c.strip()]


def block_starting(prefix: str) -> str:
    found = [b for b in blocks("sh") if commands(b)[0].startswith(prefix)]
    assert len(found) == 1, f"one ```sh block starts with {prefix!r}"
    return found[0]


# ---------------------------------------------------------------- the sandbox
def _save_png(path: Path, img) -> None:  # type: ignore[no-untyped-def]
    from semlayout.data.pairs import encode_png

    path.write_bytes(encode_png(img))


def _make_run(out: Path, seed: int, n: int, env: dict[str, str]) -> None:
    args = f"--n-synth {n} --seed {seed} {MAKE_ARGS} --out {out}"
    r = subprocess.run(["make", "-C", str(REPO), "run", f"RUN_ARGS={args}"], env=env,
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> dict:
    from semlayout.data.align_folder import align_folder
    from semlayout.data.pairs import read_gray8, read_manifest, write_pair_folder
    from semlayout.data.synth import synthesize
    from semlayout.registry import Registry

    root = tmp_path_factory.mktemp("readme")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMLAYOUT_", "MLFLOW_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        SEMLAYOUT_CACHE_DIR=str(root / "cache"), SEMLAYOUT_API_TOKEN="t-api",
        SEMLAYOUT_ADMIN_TOKEN="t-admin", AWS_ENDPOINT_URL=moto_server, AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1", COLUMNS="200",
    )  # fmt: skip
    # the registry: two `make run`s on different data, v1 approved in between
    _make_run(root / "outputs", 0, 24, env)
    Registry(f"sqlite:///{root / 'outputs/mlflow/mlflow.db'}").approve("semlayout", 1, "test", "v1")
    _make_run(root / "outputs", 5, 30, env)
    # reviewed pairs that all pass validation, and the images the fab engineer sends
    raw = synthesize(root / "fixture-raw", 16, seed=21, progress=False)
    align_folder(raw, root / "fixture-aligned")
    passed = {r.id for r in read_manifest(root / "fixture-aligned")}
    pairs = [r for r in read_manifest(raw) if r.id in passed]
    assert len(pairs) >= 6
    from semlayout.data.pairs import PairArrays

    write_pair_folder(root / "reviewed" / "2026-11-24", [
        PairArrays(r.id, read_gray8(r.sem_path), read_gray8(r.layout_path), r.pattern_type, None)
        for r in pairs[:5]
    ])  # fmt: skip
    aligned = read_manifest(root / "fixture-aligned")[0]
    _save_png(root / "sem_0001.png", read_gray8(aligned.sem_path))
    _save_png(root / "true_layout.png", read_gray8(aligned.layout_path))
    last = pairs[-1]
    _save_png(root / "raw_sem.png", read_gray8(last.sem_path))
    _save_png(root / "design.png", read_gray8(last.layout_path))
    shutil.copytree(REPO / "src" / "semlayout" / "configs", root / "configs")
    import boto3  # the bucket exists before the engineer uploads

    boto3.client(
        "s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket="fab-data")  # fmt: skip
    return {"root": root, "env": env}


def run_block(block: str, sandbox: dict, port: int | None = None) -> str:
    text = block if port is None else block.replace("8000", str(port))
    script = sandbox["root"] / "block.sh"
    script.write_text(text)
    r = subprocess.run(["bash", "-euo", "pipefail", str(script)], cwd=sandbox["root"],
                       env=sandbox["env"], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, (
        f"README block failed:\n{text}\n--- stdout\n{r.stdout[-3000:]}"
        f"\n--- stderr\n{r.stderr[-3000:]}"
    )
    return r.stdout


# ---------------------------------------------------------------- the tests
def test_every_sh_block_is_run_by_this_test() -> None:
    starts = {commands(b)[0].split()[1] if commands(b)[0].startswith("semlayout") else
              commands(b)[0].split()[0] for b in blocks("sh")}  # fmt: skip
    assert starts == {"intake", "registry", "curl", "pipeline", "monitor", "serve", "--version"}
    assert len(README.read_text().splitlines()) <= 200


def test_the_readme_runs_here(sandbox: dict) -> None:
    root = sandbox["root"]
    out = run_block(block_starting("semlayout intake"), sandbox)
    assert "5 pairs, 0 rejected" in out and '"already_complete": true' in out
    assert "5 pairs in 1 complete batches" in out
    out = run_block(block_starting("semlayout registry"), sandbox)
    assert "DIFFERENT data" in out and (root / "compare.html").is_file()
    assert "comparison with v1 on the same pairs:" in out and "v2 is now champion" in out
    assert "v1 is champion again" in out
    serve = commands(block_starting("semlayout serve"))[0]
    port = hs.free_port()
    with open(root / "serve.log", "wb") as log:
        proc = subprocess.Popen(["bash", "-c", "exec " + serve.replace("8000", str(port))],
                                cwd=root, env=sandbox["env"], stdout=log, stderr=log)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (root / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.3)
        out = run_block(block_starting("curl"), sandbox, port)
        # curl -s exits 0 on an HTTP error: every answer is checked here
        assert '"qc_pass"' in out and '"direction":"sem2layout"' in out.replace(" ", "")
        assert '"feedback_count":1' in out.replace(" ", "")
        from semlayout.data.pairs import read_gray8

        assert read_gray8(root / "layout_0001.png").shape == (250, 250)
        assert read_gray8(root / "predicted_sem.png").shape == (250, 250)
        out = run_block(block_starting("semlayout monitor"), sandbox)
        assert "requests (last" in out and "would start" in out
    finally:
        proc.terminate()
        proc.wait(30)
    out = run_block(block_starting("semlayout pipeline"), sandbox)
    assert "nvidia-l4" in out and "dry run, nothing sent" in out
    assert (root / "build" / "pipelines" / "training.yaml").is_file()
    out = run_block(block_starting("semlayout --version"), sandbox)
    assert (root / "predicted").is_dir() and (root / "report.html").is_file()


def test_text_blocks_name_real_commands_options_and_targets() -> None:
    from semlayout.cli import build_command

    root = build_command()
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    checked = 0
    for block in blocks("text"):
        for cmd in commands(block):
            for part in cmd.split("|"):
                words = shlex.split(part)
                if words[0] == "make":
                    assert words[1] in targets, part
                elif words[0] == "semlayout":
                    _check_semlayout(root, words[1:])
                elif words[:2] == ["kubectl", "kustomize"]:
                    if shutil.which("kubectl"):
                        r = subprocess.run(["kubectl", "kustomize", str(REPO / words[2])],
                                           capture_output=True, text=True, timeout=60)  # fmt: skip
                        assert r.returncode == 0, r.stderr
                elif words[:2] != ["kubectl", "apply"]:
                    raise AssertionError(f"unchecked README command: {part}")
                checked += 1
    assert checked >= 6


def _check_semlayout(command, words: list[str]) -> None:  # type: ignore[no-untyped-def]
    path = []
    while words and hasattr(command, "commands") and words[0] in command.commands:
        command = command.commands[words[0]]
        path.append(words.pop(0))
    assert not hasattr(command, "commands"), f"semlayout {' '.join(path)}: not a command"
    known = {o for p in command.params for o in p.opts}
    for w in words:
        if w.startswith("--"):
            assert w.split("=")[0] in known, f"semlayout {' '.join(path)}: no option {w}"


def test_every_link_in_the_readme_is_in_the_repository() -> None:
    links = re.findall(r"\]\(([^)#]+)\)", README.read_text())
    assert links
    for link in links:
        assert "://" in link or (REPO / link).exists(), f"README links to a missing {link}"
