"""Reviewed-pair intake to S3 (a real moto server over HTTP): validation, all-or-nothing batches,
--skip-invalid, idempotent re-runs, resumable interrupted uploads, and materialising batches."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import cv2
import helpers_servers as hs
import numpy as np
import pytest

from semlayout.cli import main as cli_main
from semlayout.data.pairs import read_manifest
from semlayout.errors import SemlayoutError
from semlayout.intake import BatchRefused, upload_batch, validate_pairs
from semlayout.intake_batches import download_batches, list_batches

moto_server, s3_env, s3_bucket = hs.moto_server, hs.s3_env, hs.s3_bucket


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(folder: Path, rows: list[dict[str, str]]) -> None:
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory) -> tuple[Path, list[str], list[str]]:
    """A synthetic pair folder and the ids whose alignment QC passes / fails
    (by align_pair itself)."""
    from semlayout.data.align import align_pair
    from semlayout.data.pairs import read_gray8
    from semlayout.data.synth import synthesize

    folder = synthesize(
        tmp_path_factory.mktemp("intake") / "syn",
        10,
        seed=1,
        mix="line_space=1,via_array=1",
        progress=False,
    )
    ok, bad = [], []
    for rec in read_manifest(folder):
        res = align_pair(read_gray8(rec.sem_path), read_gray8(rec.layout_path))
        (ok if res.qc_pass else bad).append(rec.id)
    assert len(ok) >= 5 and bad, (ok, bad)
    return folder, ok, bad


def subset(src: Path, dest: Path, ids: list[str]) -> Path:
    """Copy `src` and keep only `ids` in its manifest (files of other pairs stay, unreferenced)."""
    shutil.copytree(src, dest)
    rows = [r for r in _rows(src) if r["id"] in ids]
    _write_rows(dest, rows)
    return dest


def _objects(endpoint: str, bucket: str, prefix: str = "") -> dict[str, str]:
    out = {}
    paginator = hs.s3_client(endpoint).get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["ETag"]
    return out


def _cli(args, capsys):
    code = cli_main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validation_names_each_problem(synth_folder, tmp_path):
    src, ok, bad = synth_folder
    folder = subset(src, tmp_path / "p", ok[:5] + bad[:1])
    rows = _rows(folder)
    by_id = {r["id"]: r for r in rows}
    # 0: RGB SEM, 1: 16-bit SEM, 2: grey levels in the layout, 3: missing layout file, 4: fine
    sem0 = cv2.imread(str(folder / by_id[ok[0]]["sem_path"]), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(folder / by_id[ok[0]]["sem_path"]), np.dstack([sem0] * 3))
    sem1 = cv2.imread(str(folder / by_id[ok[1]]["sem_path"]), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(folder / by_id[ok[1]]["sem_path"]), sem1.astype(np.uint16) * 257)
    lay2 = cv2.imread(str(folder / by_id[ok[2]]["layout_path"]), cv2.IMREAD_UNCHANGED)
    lay2[0, :10] = 128
    cv2.imwrite(str(folder / by_id[ok[2]]["layout_path"]), lay2)
    (folder / by_id[ok[3]]["layout_path"]).unlink()
    # a duplicate of pair 4 under another id, and a JPEG posing as .png
    dup = dict(by_id[ok[4]], id="dup-of-4")
    jpg = dict(by_id[ok[4]], id="jpeg-one", sem_path="sem/jpeg-one.png")
    cv2.imwrite(str(folder / "sem/jpeg-one.jpg"), sem0)
    (folder / "sem/jpeg-one.jpg").rename(folder / "sem/jpeg-one.png")
    _write_rows(folder, rows + [dup, jpg])

    v = validate_pairs(folder)
    reasons = {r.id: r.reason for r in v.rejects}
    assert reasons == {
        ok[0]: "not_grayscale",
        ok[1]: "bit_depth",
        ok[2]: "not_binary",
        ok[3]: "missing",
        bad[0]: reasons[bad[0]],
        "dup-of-4": "duplicate",
        "jpeg-one": "not_png",
    }
    assert reasons[bad[0]].startswith("align:")
    assert [p.id for p in v.valid] == [ok[4]]
    assert all(r.detail for r in v.rejects)


def test_one_corrupt_pair_refuses_the_whole_batch(
    synth_folder, tmp_path, s3_bucket, s3_env, capsys
):
    src, ok, bad = synth_folder
    folder = subset(src, tmp_path / "p", ok[:4] + bad[:1])
    code, out, err = _cli(
        ["intake", "upload", str(folder), "--to", f"s3://{s3_bucket}/reviewed", "--quiet"], capsys
    )
    assert code == 2
    assert f"rejected {bad[0]}: align:" in err
    assert err.strip().splitlines()[-1].startswith("error: batch refused: 1 of 5 pairs are invalid")
    assert _objects(s3_env["AWS_ENDPOINT_URL"], s3_bucket) == {}
    with pytest.raises(BatchRefused) as info:
        upload_batch(folder, f"s3://{s3_bucket}/reviewed")
    assert [r.id for r in info.value.rejects] == [bad[0]]


def test_skip_invalid_uploads_valid_pairs_then_the_manifest(
    synth_folder, tmp_path, s3_bucket, s3_env, capsys
):
    src, ok, bad = synth_folder
    folder = subset(src, tmp_path / "p", ok[:4] + bad[:1])
    uri = f"s3://{s3_bucket}/reviewed"
    code, out, err = _cli(
        [
            "intake",
            "upload",
            str(folder),
            "--to",
            uri,
            "--skip-invalid",
            "--json",
            "--uploader",
            "dana",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["n_pairs"] == 4 and res["n_rejected"] == 1 and res["rejects"][0]["id"] == bad[0]
    objs = _objects(s3_env["AWS_ENDPOINT_URL"], s3_bucket)
    bid = res["batch_id"]
    # sem + layout + clean per pair, content-addressed by the sha256 of the file
    expected = set()
    for r in _rows(folder):
        if r["id"] in ok[:4]:
            for col in ("sem_path", "layout_path", "clean_path"):
                import hashlib

                expected.add(
                    "reviewed/objects/"
                    f"{hashlib.sha256((folder / r[col]).read_bytes()).hexdigest()}.png"
                )
    assert set(objs) == expected | {
        f"reviewed/batches/{bid}/manifest.csv",
        f"reviewed/batches/{bid}/batch.json",
    }
    client = hs.s3_client(s3_env["AWS_ENDPOINT_URL"])
    manifest = (
        client.get_object(Bucket=s3_bucket, Key=f"reviewed/batches/{bid}/manifest.csv")["Body"]
        .read()
        .decode()
    )
    mrows = list(csv.DictReader(manifest.splitlines()))
    assert sorted(r["id"] for r in mrows) == sorted(ok[:4])
    assert all(f"reviewed/{r['sem_path']}" in objs for r in mrows)
    assert "dose" in mrows[0]  # extra columns travel with the pairs
    info = json.loads(
        client.get_object(Bucket=s3_bucket, Key=f"reviewed/batches/{bid}/batch.json")["Body"].read()
    )
    assert (
        info["uploader"] == "dana"
        and info["counts"]["pairs"] == 4
        and info["counts"]["rejected"] == 1
    )
    assert info["rejects"][0]["id"] == bad[0]

    # a re-run of the same folder is the same batch and adds nothing
    code, out, _ = _cli(
        ["intake", "upload", str(folder), "--to", uri, "--skip-invalid", "--quiet"], capsys
    )
    assert code == 0 and "already uploaded" in out and bid in out
    assert _objects(s3_env["AWS_ENDPOINT_URL"], s3_bucket) == objs

    code, out, _ = _cli(["intake", "list", uri, "--json"], capsys)
    listed = json.loads(out)
    assert [(b["batch_id"], b["pairs"], b["rejected"], b["complete"]) for b in listed] == [
        (bid, 4, 1, True)
    ]
    code, out, _ = _cli(["intake", "list", uri], capsys)
    assert code == 0 and bid in out and "4 pairs in 1 complete batches" in out


def test_interrupted_upload_leaves_no_manifest_and_resumes(
    synth_folder, tmp_path, s3_bucket, s3_env
):
    src, ok, _ = synth_folder
    folder = subset(src, tmp_path / "p", ok[:4])
    uri = f"s3://{s3_bucket}/r"
    stored: list[str] = []

    def boom(key: str) -> None:
        stored.append(key)
        if len(stored) == 5:
            raise ConnectionError("network dropped")

    with pytest.raises(ConnectionError):
        upload_batch(folder, uri, on_object=boom, workers=1)
    objs = _objects(s3_env["AWS_ENDPOINT_URL"], s3_bucket)
    assert len(objs) == 5 and not any("batches/" in k for k in objs)
    assert list_batches(uri) == []  # readers see nothing
    res = upload_batch(folder, uri)
    assert res.objects_skipped == 5 and res.objects_uploaded == 12 - 5 and not res.already_complete
    objs2 = _objects(s3_env["AWS_ENDPOINT_URL"], s3_bucket)
    assert (
        len([k for k in objs2 if "/objects/" in k]) == 12
    )  # 4 pairs x (sem, layout, clean), no duplicates
    assert all(objs2[k] == v for k, v in objs.items())
    assert [b["batch_id"] for b in list_batches(uri)] == [res.batch_id]


def test_parallel_upload_failure_stops_and_resumes(synth_folder, tmp_path, s3_bucket, s3_env):
    src, ok, _ = synth_folder
    folder = subset(src, tmp_path / "p", ok[:5])
    uri = f"s3://{s3_bucket}/par"
    calls: list[str] = []

    def flaky(key: str) -> None:
        calls.append(key)
        if len(calls) == 3:
            raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        upload_batch(folder, uri, on_object=flaky, workers=4)
    first = _objects(s3_env["AWS_ENDPOINT_URL"], s3_bucket)
    assert 3 <= len(first) < 15 and list_batches(uri) == []
    res = upload_batch(folder, uri, workers=4)
    assert res.objects_skipped == len(first) and res.objects_uploaded + res.objects_skipped == 15
    assert (
        len([k for k in _objects(s3_env["AWS_ENDPOINT_URL"], s3_bucket) if "/objects/" in k]) == 15
    )


def test_download_batches_makes_one_pair_folder(synth_folder, tmp_path, s3_bucket):
    src, ok, _ = synth_folder
    uri = f"s3://{s3_bucket}/r"
    a = upload_batch(subset(src, tmp_path / "a", ok[:2]), uri)
    time.sleep(1.1)  # batch.json "created" has one-second resolution
    b = upload_batch(subset(src, tmp_path / "b", ok[1:4]), uri)  # ok[1] in both batches
    assert a.batch_id != b.batch_id and b.objects_skipped == 3
    out = download_batches(uri, tmp_path / "dl")
    recs = {r.id: r for r in read_manifest(out)}
    assert sorted(recs) == sorted(ok[:4])
    src_rows = {r["id"]: r for r in _rows(src)}
    for pid, rec in recs.items():
        assert rec.sem_path.read_bytes() == (src / src_rows[pid]["sem_path"]).read_bytes()
        assert rec.layout_path.read_bytes() == (src / src_rows[pid]["layout_path"]).read_bytes()
        assert rec.clean_path is not None and rec.clean_path.is_file()
        assert rec.pattern_type == src_rows[pid]["pattern_type"]
    assert {r.extra["batch_id"] for r in recs.values()} == {a.batch_id, b.batch_id}
    created_b = [x for x in list_batches(uri) if x["batch_id"] == b.batch_id][0]["created"]
    later = download_batches(uri, tmp_path / "dl2", since=created_b)
    assert sorted(r.id for r in read_manifest(later)) == sorted(ok[1:4])
    with pytest.raises(SemlayoutError, match="no complete intake batches"):
        download_batches(uri, tmp_path / "dl3", since="2999-01-01")
    with pytest.raises(SemlayoutError, match="ISO"):
        download_batches(uri, tmp_path / "dl4", since="yesterday")


def test_local_folder_target_and_cli_download(synth_folder, tmp_path, capsys):
    src, ok, _ = synth_folder
    target = tmp_path / "bucket"
    # no scheme and no such folder: refused (it would be a bucket name meant for S3)
    code, _, err = _cli(
        ["intake", "upload", str(subset(src, tmp_path / "p0", ok[:1])), "--to", "fab-data/rev"],
        capsys,
    )
    assert code == 2 and "s3://fab-data/rev" in err and not Path("fab-data").exists()
    target.mkdir()
    code, out, err = _cli(
        [
            "intake",
            "upload",
            str(subset(src, tmp_path / "p", ok[:2])),
            "--to",
            str(target),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    assert len(list((target / "objects").glob("*.png"))) == 6
    code, out, _ = _cli(["intake", "download", str(target), "--out", str(tmp_path / "dl")], capsys)
    assert code == 0 and "wrote 2 pairs" in out
    code, _, err = _cli(["intake", "upload", str(tmp_path / "nope"), "--to", str(target)], capsys)
    assert code == 2 and "not found" in err
    code, _, err = _cli(["intake", "upload", str(tmp_path / "p"), "--to", "s3:///x"], capsys)
    assert code == 2 and "empty bucket" in err


def test_upload_killed_midway_resumes_without_duplicates(synth_folder, tmp_path, s3_bucket, s3_env):
    """A real `kill -9` of an uploading process: no manifest, and a re-run completes the batch."""
    import os
    import signal
    import subprocess
    import sys

    src, ok, _ = synth_folder
    folder = subset(src, tmp_path / "p", ok[:4])
    uri = f"s3://{s3_bucket}/k"
    endpoint = s3_env["AWS_ENDPOINT_URL"]
    # slow each object down so the kill lands in the middle of the upload
    code = (
        "import sys, time; from semlayout.intake import upload_batch; "
        "upload_batch(sys.argv[1], sys.argv[2], workers=1, on_object=lambda k: time.sleep(0.4))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), uri], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while len(_objects(endpoint, s3_bucket)) < 3:
            assert proc.poll() is None, "upload finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    partial = _objects(endpoint, s3_bucket)
    assert 3 <= len(partial) < 12 and not any("/batches/" in k for k in partial)
    assert list_batches(uri) == []
    res = upload_batch(folder, uri)
    assert res.objects_skipped == len(partial) and res.objects_uploaded == 12 - len(partial)
    final = _objects(endpoint, s3_bucket)
    assert len([k for k in final if "/objects/" in k]) == 12
    assert [b["batch_id"] for b in list_batches(uri)] == [res.batch_id]
