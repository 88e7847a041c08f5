"""User mistakes at the command line found by an audit: each is one `error:` line and a non-zero
exit, and nothing the user had is lost (an input folder, a model, a store, a file at --out)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import helpers_postgres as hp
import pytest
from helpers_eval import make_tiny_checkpoint

CLI = [sys.executable, "-m", "semlayout.cli"]
postgres, pg_url = hp.postgres, hp.pg_url


def run(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def refused(res: subprocess.CompletedProcess, *needles: str) -> str:
    """The one-line error of a refused command (non-zero exit, no traceback)."""
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height` 8-bit grey pixels
    (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = (
        struct.pack(">I", len(ihdr))
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    )
    return b"\x89PNG\r\n\x1a\n" + chunk


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "model")


@pytest.fixture
def sem_dir(tmp_path, tiny_aligned):
    d = tmp_path / "in"
    d.mkdir()
    src = sorted((tiny_aligned / "sem").glob("*.png"))[0]
    (d / "a.png").write_bytes(src.read_bytes())
    return d


def test_outputs_that_would_destroy_an_input_are_refused(tmp_path, ckpt, sem_dir, tiny_pairs):
    model = tmp_path / "model"
    model.mkdir()
    for p in ckpt.iterdir():
        (model / p.name).write_bytes(p.read_bytes())
    before = tree(model)
    refused(
        run("predict", sem_dir, "--model", model, "-d", "sem2layout", "--out", model),
        "would replace the model",
    )
    refused(
        run("predict", sem_dir, "--model", model, "-d", "sem2layout", "--out", tmp_path),
        "would replace",
    )
    assert tree(model) == before

    store = tmp_path / "store"
    store.mkdir()  # a destination without a scheme must be an existing folder
    up = run("intake", "upload", tiny_pairs, "--to", store, "--skip-invalid", "--quiet")
    assert up.returncode == 0, up.stderr
    kept = tree(store)
    refused(run("intake", "download", store, "--out", store), "would replace the intake store")
    assert tree(store) == kept


def test_a_file_at_out_is_not_replaced_by_a_folder(tmp_path, tiny_pairs, sem_dir, ckpt):
    afile = tmp_path / "afile"
    afile.write_text("precious")
    refused(run("align", tiny_pairs, "--out", afile, "--no-progress"), "exists and is not a folder")
    refused(
        run("predict", sem_dir, "--model", ckpt, "-d", "sem2layout", "--out", afile), "not a folder"
    )
    assert afile.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # a path that cannot be a folder (under a file) is one line too
    refused(
        run("predict", sem_dir, "--model", ckpt, "-d", "sem2layout", "--out", afile / "x"),
        "cannot use",
    )


def test_evaluate_writes_no_metrics_when_the_report_cannot_be_written(tmp_path, ckpt, tiny_shards):
    (tmp_path / "adir").mkdir()
    res = run(
        "evaluate",
        "--model",
        ckpt,
        "--data",
        tiny_shards,
        "--out",
        tmp_path / "m.json",
        "--report",
        tmp_path / "adir",
    )
    refused(res, "is a folder")
    assert not (tmp_path / "m.json").exists()


def test_bomb_image_and_corrupt_files(tmp_path, ckpt, tiny_shards):
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    (bomb / "x.png").write_bytes(png_header_only(60000, 60000))
    refused(
        run("predict", bomb, "--model", ckpt, "-d", "sem2layout", "--out", tmp_path / "o"),
        "60000x60000",
    )
    assert not (tmp_path / "o").exists()

    cut = tmp_path / "cut"
    cut.mkdir()
    for p in tiny_shards.rglob("*"):
        if p.is_file():
            dest = cut / p.relative_to(tiny_shards)
            dest.parent.mkdir(parents=True, exist_ok=True)
            data = p.read_bytes()
            dest.write_bytes(data[:500] if p.suffix == ".npz" else data)
    refused(
        run("evaluate", "--model", ckpt, "--data", cut, "--out", tmp_path / "e.json"),
        "corrupt or truncated",
    )

    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    refused(
        run("train", "--config", binary, "--data", tiny_shards, "--out", tmp_path / "r"),
        "not a UTF-8",
    )
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  epochs: [1, 2\n")
    refused(
        run("train", "--config", bad_yaml, "--data", tiny_shards, "--out", tmp_path / "r"), "line"
    )


def test_truncated_train_state_and_unusable_settings(tmp_path, tiny_shards):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(
        json.dumps(
            {
                "name": "tiny",
                "generator": {"image_size": 32, "n_down": 3, "base_filters": 4, "max_filters": 8},
                "discriminator": {"base_filters": 4, "n_layers": 1},
                "train": {
                    "epochs": 1,
                    "decay_start_epoch": 0,
                    "batch_size": 2,
                    "val_samples": 0,
                    "sample_images": 0,
                    "checkpoint_every": 2,
                    "max_steps": 2,
                },
            }
        )
    )
    first = run("train", "--config", cfg, "--data", tiny_shards, "--out", tmp_path / "run")
    assert first.returncode == 0, first.stderr
    states = list((tmp_path / "run").rglob("train_state.pt"))
    assert states
    for state in states:  # RUN/last and the step checkpoints
        if not state.is_symlink():
            state.write_bytes(state.read_bytes()[:100])
    refused(
        run(
            "train",
            "--config",
            cfg,
            "--data",
            tiny_shards,
            "--out",
            tmp_path / "run",
            "--resume",
            "--set",
            "train.max_steps=4",
        ),
        "corrupt or truncated",
    )
    for device, needle in (("cuda", "no CUDA device"), ("banana", "train.device")):
        refused(
            run(
                "train",
                "--config",
                cfg,
                "--data",
                tiny_shards,
                "--out",
                tmp_path / f"r-{device}",
                "--set",
                f"train.device={device}",
            ),
            needle,
        )
    refused(run("registry", "list", "--tracking-uri", "bogus://x"), "unsupported scheme")
    notdb = tmp_path / "notdb"
    notdb.write_text("hello")
    refused(
        run("registry", "list", "--tracking-uri", f"sqlite:///{notdb}"), "not an SQLite database"
    )


def test_nan_weights_and_meaningless_numbers(tmp_path, ckpt, sem_dir, tiny_aligned, tiny_shards):
    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan"
    broken.mkdir()
    for p in ckpt.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    weights = next(broken.glob("*.safetensors"))
    state = load_file(str(weights))
    state = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in state.items()
    }
    save_file(state, str(weights))
    refused(
        run("predict", sem_dir, "--model", broken, "-d", "sem2layout", "--out", tmp_path / "o"),
        "non-finite",
    )
    assert not (tmp_path / "o").exists()

    res = run("shard", tiny_aligned, tiny_aligned, "--out", tmp_path / "sh")
    refused(res, "given twice")
    res = run(
        "monitor",
        "drift-report",
        "--db",
        tmp_path / "m.db",
        "--reference",
        tiny_shards,
        "--drift-share",
        "-1",
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_serve_checks_the_database_and_registry_before_starting(tmp_path, ckpt):
    afile = tmp_path / "afile"
    afile.write_text("not a database")
    refused(
        run("serve", "--model", ckpt, "--db", afile, "--port", "18765", timeout=60),
        "not a usable SQLite",
    )
    typo = tmp_path / "typo.db"
    refused(
        run(
            "serve",
            "--model",
            "models:/semlayout@champion",
            "--tracking-uri",
            f"sqlite:///{typo}",
            "--db",
            tmp_path / "m.db",
            "--port",
            "18766",
            timeout=60,
        ),
        "no MLflow registry",
    )
    assert not typo.exists()


def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_partial_output(tmp_path):
    proc = subprocess.Popen(
        [*CLI, "synth", str(tmp_path / "big"), "--n", "3000", "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        p.name.startswith(".big.tmp") for p in tmp_path.iterdir()
    ):
        time.sleep(0.2)
    assert any(
        p.name.startswith(".big.tmp") for p in tmp_path.iterdir()
    ), "synth never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["synth", "OUT", "--n", "abc"], ["semlayout synth", "'--n'", "integer", "--help"]),
        (["frobnicate"], ["No such command 'frobnicate'"]),
        (["synth"], ["Missing argument 'out'"]),
        (["train", "--bogus"], ["semlayout train", "--bogus"]),
        (["registry", "frob"], ["semlayout registry", "'frob'"]),
        (["serve", "--port", "x"], ["'--port'"]),
    ],
)
def test_usage_errors_are_one_line_with_a_pointer_to_help(tmp_path, capsys, argv, needles):
    from semlayout.cli import main

    code = main([str(tmp_path / a) if a == "OUT" else a for a in argv])
    captured = capsys.readouterr()
    assert code == 2
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert all(n in lines[0] for n in needles), lines[0]
    assert not any(tmp_path.iterdir())  # nothing written


def test_help_and_bare_groups_still_print_help(capsys):
    from semlayout.cli import main

    assert main(["synth", "--help"]) == 0
    assert "--reverse-fraction" in capsys.readouterr().out
    assert main(["registry"]) == 2  # a group without a command shows its commands, as click does
    assert "approve" in capsys.readouterr().out
    assert main(["version"]) == 0


def test_db_is_a_path_or_a_url_wherever_a_command_takes_it(tmp_path, pg_url):
    """`--db postgresql://...` (or SEMLAYOUT_MONITOR_DB) is a server for serve, monitor and loop,
    never a relative file `postgresql:/...`; an unreachable one is one line without its
    password; a reachable one answers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"postgresql://u:topsecret@127.0.0.1:{s.getsockname()[1]}/monitor"
    for argv in (
        ["monitor", "summary", "--db", closed],
        ["monitor", "fsck", "--db", closed, "--feedback-uri", str(tmp_path / "fb")],
        ["loop", "check", "--db", closed],
        ["serve", "--model", "nowhere", "--db", closed, "--port", "18767"],
    ):
        line = refused(run(*argv, cwd=tmp_path, timeout=60))
        assert "topsecret" not in line, line
    refused(run("monitor", "summary", cwd=tmp_path, env={"SEMLAYOUT_MONITOR_DB": closed}))
    assert not any(tmp_path.iterdir()), "nothing created: a URL is not a path"

    from semlayout.monitoring.store import MonitorStore

    store = MonitorStore(pg_url)
    store.record_trigger_decision(True, {"reasons": ["test"]})
    store.close()
    res = run("monitor", "summary", "--json", env={"SEMLAYOUT_MONITOR_DB": pg_url})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["last_trigger"] and out["db"].startswith("postgresql://postgres@127.0.0.1:")
    res = run("loop", "check", "--db", pg_url, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["observations"]["drift_samples"] == 0
