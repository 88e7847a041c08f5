"""Two `semlayout serve` replicas on one PostgreSQL store and one S3 feedback bucket (moto's
server over HTTP), 8 clients for 45 s on translate + feedback, and one replica killed with
SIGKILL half-way:

- the other replica keeps serving (every request it got after the kill answered 200);
- every 200 has its rows, no id twice; rows without a 200 are at most the requests the dead
  replica had in flight, and none is half-written (each prediction has its inference and drift
  events; each feedback row its two images: `semlayout monitor fsck` is clean);
- `semlayout loop check` against the PostgreSQL store counts both replicas' requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter

import helpers_postgres as hp
import helpers_replicas as hr
import helpers_servers as hs
import pytest
from helpers_serving import aligned_arrays, make_checkpoint

postgres, pg_url = hp.postgres, hp.pg_url
moto_server, s3_env, s3_bucket = hs.moto_server, hs.s3_env, hs.s3_bucket
SECONDS = float(os.environ.get("SEMLAYOUT_REPLICA_TEST_SECONDS", "45"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(hr.semlayout_cmd(*args), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_replicas_share_one_store_and_survive_a_kill(
    tmp_path, tiny_aligned, tiny_shards, postgres, pg_url, s3_bucket
):
    images = aligned_arrays(tiny_aligned)[0][:8]
    ckpt = make_checkpoint(tmp_path / "c", seed=4)
    feedback = f"s3://{s3_bucket}/feedback"
    args = ["--model", str(ckpt), "--reference", str(tiny_shards)]
    args += ["--db", pg_url, "--feedback-uri", feedback]
    replicas = [hr.ServeProcess(args, tmp_path / f"serve-{i}.log") for i in range(2)]
    try:
        for r in replicas:
            r.wait_ready()
        load = hr.LoadClients([r.url for r in replicas], images, 8, feedback_every=6).start()
        time.sleep(SECONDS / 2)
        killed_at = time.monotonic()
        replicas[1].kill9()
        time.sleep(SECONDS / 2)
        outcomes = load.stop()
        survivor, dead = replicas[0].url, replicas[1].url
        assert hr.readyz(survivor)[0] == 200
    finally:
        for r in replicas:
            r.stop()

    problems = [o.problem for o in outcomes if o.problem]
    assert not problems, problems[:5]
    statuses = Counter((o.url == dead, o.status) for o in outcomes)
    after_kill = [o for o in outcomes if o.url == survivor and o.started > killed_at]
    assert after_kill and all(o.status == 200 for o in after_kill), Counter(
        o.status for o in after_kill
    )
    lost = [o for o in outcomes if o.status is None]  # no answer: all to the dead replica
    assert lost and all(o.url == dead for o in lost)
    in_flight = [o for o in lost if o.started <= killed_at + 1]

    db = pg_url.rsplit("/", 1)[1]
    rows = {r[0] for r in postgres.sql("SELECT id FROM predictions", db)}
    ok = [o.ident for o in hr.answered(outcomes, "translate")]
    assert len(ok) == len(set(ok)) and set(ok) <= rows
    assert len(rows - set(ok)) <= len([o for o in in_flight if o.kind == "translate"])
    for sql in (
        "SELECT COUNT(*) FROM predictions p WHERE NOT EXISTS "
        "(SELECT 1 FROM inference_events e WHERE e.prediction_id = p.id)",
        "SELECT COUNT(*) FROM predictions p WHERE NOT EXISTS "
        "(SELECT 1 FROM drift_events d WHERE d.prediction_id = p.id)",
        "SELECT COUNT(*) FROM (SELECT sem_sha256 FROM feedback GROUP BY sem_sha256 "
        "HAVING COUNT(*) > 1) dup",
    ):
        assert postgres.sql(sql, db)[0][0] == 0, sql
    fb_rows = {r[0] for r in postgres.sql("SELECT id FROM feedback", db)}
    fb_ok = [o.ident for o in hr.answered(outcomes, "feedback")]
    assert fb_ok and len(fb_ok) == len(set(fb_ok)) and set(fb_ok) <= fb_rows
    assert len(fb_rows - set(fb_ok)) <= len([o for o in in_flight if o.kind == "feedback"])

    fsck = _cli("monitor", "fsck", "--db", pg_url, "--feedback-uri", feedback, "--json")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    report = json.loads(fsck.stdout)
    assert report["clean"] and report["rows"] == len(fb_rows), report

    check = _cli(
        "loop", "check", "--db", pg_url, "--feedback-uri", feedback, "--json",
        "--set", "policy.drift_window=1000000", "--set", "policy.min_new_pairs=1000000",
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    obs = json.loads(check.stdout)["observations"]
    by_replica = Counter(o.url for o in hr.answered(outcomes, "translate"))
    assert by_replica[survivor] > 0 and by_replica[dead] > 0
    assert obs["drift_samples"] == len(rows) >= by_replica[survivor] + by_replica[dead]
    assert obs["new_pairs_feedback"] == len(fb_rows)
    print(
        f"replicas: {len(outcomes)} requests in {SECONDS:.0f} s, {dict(statuses)} "
        f"(dead?, status); rows {len(rows)} predictions for {len(ok)} translate 200s, "
        f"{len(fb_rows)} feedback rows for {len(fb_ok)} feedback 200s; "
        f"{len(in_flight)} requests in flight at the kill"
    )
