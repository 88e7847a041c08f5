"""write_shards / read_index / iter_split / load_split_arrays / reference stats / alignment
table / `semlayout shard`."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers_shards import make_pairs

from semlayout.cli import main as cli_main
from semlayout.data.features import FEATURE_NAMES, histogram, image_features
from semlayout.data.pairs import read_gray8, read_manifest
from semlayout.data.reference_stats import load_reference_stats
from semlayout.data.shards import (
    FORMAT,
    SPLITS,
    ShardSource,
    assign_splits,
    iter_split,
    load_split_arrays,
    read_index,
    split_counts,
    write_shards,
)
from semlayout.errors import SemlayoutError

FAMILIES = {"line_space": 20, "via_array": 8, "rare": 3, "loner": 1, "pair": 2}


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("sh") / "aligned", FAMILIES, seed=1)


@pytest.fixture(scope="module")
def shards(aligned, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sh") / "shards"
    write_shards(aligned, out, val=0.1, test=0.2, seed=0, shard_size=8)
    return out


def _members(shards_dir: Path) -> dict[str, str]:
    index = read_index(shards_dir)
    out = {}
    for split in SPLITS:
        if index["splits"][split]["n"]:
            for r in iter_split(shards_dir, split):
                out[r["id"]] = split
    return out


# ----------------------------------------------------------------------------- splitting


@pytest.mark.parametrize("n", range(0, 40))
def test_split_counts(n):
    tr, va, te = split_counts(n, 0.1, 0.2)
    assert tr + va + te == n and min(tr, va, te) >= 0
    if n >= 3:
        assert tr >= 1 and va >= 1 and te >= 1
        assert abs(te - 0.2 * n) <= 1 and abs(va - 0.1 * n) <= 1
    else:
        assert (va, te) == (0, 0)


def test_split_counts_zero_fraction_means_empty_split():
    assert split_counts(10, 0.0, 0.3) == (7, 0, 3)
    assert split_counts(3, 0.0, 0.0) == (3, 0, 0)


def test_every_family_with_three_pairs_is_in_every_split(shards):
    index = read_index(shards)
    for split in SPLITS:
        fams = index["splits"][split]["families"]
        for fam in ("line_space", "via_array", "rare"):
            assert fams.get(fam, 0) >= 1, (split, fam)
    # 1-2 pair families are kept for training only
    assert index["splits"]["train"]["families"]["loner"] == 1
    assert index["splits"]["train"]["families"]["pair"] == 2
    assert index["splits"]["test"]["families"] == {"line_space": 4, "rare": 1, "via_array": 2}
    assert sum(index["splits"][s]["n"] for s in SPLITS) == sum(FAMILIES.values())
    assert index["families"] == sorted(FAMILIES)


def test_rare_family_stratified_for_many_seeds():
    keys = [(f"{f}{i}", f, "src") for f, n in FAMILIES.items() for i in range(n)]
    for seed in range(25):
        split = assign_splits(keys, 0.1, 0.2, seed)
        rare = sorted(split[f"rare{i}"] for i in range(3))
        assert rare == ["test", "train", "val"]


def test_split_deterministic_by_seed_and_independent_of_manifest_order(aligned, shards, tmp_path):
    again = tmp_path / "again"
    write_shards(aligned, again, val=0.1, test=0.2, seed=0, shard_size=8)
    assert _members(again) == _members(shards)
    for rel in read_index(shards)["splits"]["train"]["shards"]:
        assert (again / rel).read_bytes() == (shards / rel).read_bytes()  # byte-identical
    assert (again / "index.json").read_text().replace(str(again), "") == (
        shards / "index.json"
    ).read_text().replace(str(shards), "")

    # reversed manifest rows: same split
    shuffled = tmp_path / "shuffled"
    shutil.copytree(aligned, shuffled)
    lines = (shuffled / "manifest.csv").read_text().splitlines()
    (shuffled / "manifest.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    write_shards(shuffled, tmp_path / "s2", val=0.1, test=0.2, seed=0)
    assert _members(tmp_path / "s2") == _members(shards)

    write_shards(aligned, tmp_path / "s3", val=0.1, test=0.2, seed=1)
    assert _members(tmp_path / "s3") != _members(shards)


# ----------------------------------------------------------------------------- format, round trip


def test_shard_files_follow_the_contract(shards):
    index = read_index(shards)
    assert index["format"] == FORMAT and index["image_size"] == 250 and index["seed"] == 0
    assert index["has_clean"] is True
    assert len(index["splits"]["train"]["shards"]) == 3  # 25 train pairs, 8 per shard
    for split in SPLITS:
        for rel in index["splits"][split]["shards"]:
            assert rel.startswith(f"{split}/shard-") and rel.endswith(".npz")
            with zipfile.ZipFile(shards / rel) as zf:
                assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
            with np.load(shards / rel, allow_pickle=False) as z:
                assert set(z.files) == {
                    "ids", "families", "sources", "polarity", "sem", "layout", "clean"
                }  # fmt: skip
                n = len(z["ids"])
                assert z["polarity"].dtype == np.int8 and set(z["polarity"].tolist()) <= {1, -1}
                assert z["ids"].dtype.kind == "U" and z["families"].dtype.kind == "U"
                for key in ("sem", "layout", "clean"):
                    assert z[key].shape == (n, 250, 250) and z[key].dtype == np.uint8


def test_round_trip_is_exact(aligned, shards):
    by_id = {r.id: r for r in read_manifest(aligned)}
    seen = set()
    for split in SPLITS:
        arrays = load_split_arrays(shards, split)
        assert len(arrays["ids"]) == read_index(shards)["splits"][split]["n"]
        for i, pid in enumerate(arrays["ids"]):
            rec = by_id[str(pid)]
            assert arrays["families"][i] == rec.pattern_type
            np.testing.assert_array_equal(arrays["sem"][i], read_gray8(rec.sem_path))
            np.testing.assert_array_equal(arrays["layout"][i], read_gray8(rec.layout_path))
            np.testing.assert_array_equal(arrays["clean"][i], read_gray8(rec.clean_path))
            seen.add(str(pid))
    assert seen == set(by_id)


def test_iter_split_streams_records(shards):
    recs = list(iter_split(shards, "val"))
    assert len(recs) == read_index(shards)["splits"]["val"]["n"]
    r = recs[0]
    assert set(r) == {"id", "family", "source", "polarity", "sem", "layout", "clean"}
    assert r["source"] == "aligned" and r["sem"].shape == (250, 250) and r["sem"].dtype == np.uint8


def test_reference_stats_match_recomputation(shards):
    stats = load_reference_stats(shards)
    assert stats["feature_names"] == list(FEATURE_NAMES)
    train = load_split_arrays(shards, "train")
    for kind in ("sem", "layout"):
        feats = [image_features(im) for im in train[kind]]
        block = stats[kind]
        assert block["n"] == len(train["ids"])
        for f in FEATURE_NAMES:
            vals = np.array([d[f] for d in feats])
            assert sorted(block["features"][f]) == pytest.approx(sorted(vals), abs=1e-12)
            assert block["mean"][f] == pytest.approx(vals.mean(), abs=1e-12)
            assert block["std"][f] == pytest.approx(vals.std(), abs=1e-12)
        hist = np.mean([histogram(im) for im in train[kind]], axis=0)
        assert len(block["histogram"]) == 64 and sum(block["histogram"]) == pytest.approx(1.0)
        np.testing.assert_allclose(block["histogram"], hist, atol=1e-12)
    # layout is binary: its histogram lives in the first and last bins only
    assert stats["layout"]["histogram"][0] + stats["layout"]["histogram"][-1] == pytest.approx(1.0)
    # the file path works too
    assert load_reference_stats(shards / "reference_stats.json") == stats


# ----------------------------------------------------------------------------- inputs


def test_plain_pair_folder_with_250_sems_is_accepted(aligned, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(aligned, plain)
    (plain / "alignment.csv").unlink()
    index = write_shards(plain, tmp_path / "out")
    assert sum(index["splits"][s]["n"] for s in SPLITS) == sum(FAMILIES.values())


def _with_qc(aligned: Path, dest: Path, values: list[str]) -> list[dict[str, str]]:
    """A copy of `aligned` whose first alignment.csv rows have these qc_pass values."""
    shutil.copytree(aligned, dest)
    rows = list(csv.DictReader((dest / "alignment.csv").open()))
    for row, value in zip(rows, values, strict=False):
        row["qc_pass"] = value
    with (dest / "alignment.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def test_qc_failed_rows_are_left_out(aligned, tmp_path):
    rows = _with_qc(aligned, tmp_path / "a", ["false", "No", "0", "YES", "1"])
    write_shards(tmp_path / "a", tmp_path / "out")
    members = _members(tmp_path / "out")
    assert [r["id"] in members for r in rows[:5]] == [False, False, False, True, True]


def test_malformed_qc_pass_is_refused(aligned, tmp_path):
    rows = _with_qc(aligned, tmp_path / "a", ["true", "passed"])
    with pytest.raises(SemlayoutError, match=rf"row '{rows[1]['id']}': qc_pass is 'passed'"):
        write_shards(tmp_path / "a", tmp_path / "out")
    (tmp_path / "a" / "alignment.csv").write_text("id,qc_pass\n")
    with pytest.raises(SemlayoutError, match=r"missing column\(s\) x, y, score, reason"):
        write_shards(tmp_path / "a", tmp_path / "out")


def test_without_clean_images(tmp_path):
    src = make_pairs(tmp_path / "nc", {"a": 6, "b": 4}, with_clean=False)
    index = write_shards(src, tmp_path / "out")
    assert index["has_clean"] is False
    arrays = load_split_arrays(tmp_path / "out", "train")
    assert "clean" not in arrays
    with np.load(tmp_path / "out" / index["splits"]["train"]["shards"][0]) as z:
        assert "clean" not in z.files


def test_several_sources_with_replay_sample(aligned, shards, tmp_path):
    new = make_pairs(tmp_path / "reviewed", {"line_space": 6, "via_array": 3}, seed=9, prefix="r")
    index = write_shards([new, (shards, 10)], tmp_path / "mix", val=0.1, test=0.2, seed=0)
    srcs = {s["name"]: s for s in index["sources"]}
    assert srcs["reviewed"]["n_used"] == 9 and srcs["reviewed"]["kind"] == "pairs"
    # replay from a shard set: a sample of 10 of its TRAIN split, never its test pairs
    assert srcs["shards"]["n_used"] == 10 and srcs["shards"]["kind"] == "shards"
    assert srcs["shards"]["n_available"] == read_index(shards)["splits"]["train"]["n"]
    members = _members(tmp_path / "mix")
    orig = _members(shards)
    replayed = [pid for pid in members if pid in orig]
    assert len(replayed) == 10 and all(orig[p] == "train" for p in replayed)
    # the new pairs' test split is selectable by source
    test_new = load_split_arrays(tmp_path / "mix", "test", source="reviewed")
    assert set(test_new["sources"]) == {"reviewed"} and len(test_new["ids"]) >= 2
    assert index["splits"]["test"]["sources"]["reviewed"] == len(test_new["ids"])
    # same seed, same sample
    again = write_shards([new, (shards, 10)], tmp_path / "mix2", val=0.1, test=0.2, seed=0)
    assert again["splits"] == index["splits"]
    assert _members(tmp_path / "mix2") == members


def test_id_clash_between_sources_is_renamed(aligned, tmp_path):
    index = write_shards([aligned, ShardSource(aligned, 5, name="again")], tmp_path / "out")
    assert [s["renamed_ids"] for s in index["sources"]] == [0, 5]
    members = _members(tmp_path / "out")
    assert len(members) == sum(FAMILIES.values()) + 5
    assert sum(pid.startswith("s1-") for pid in members) == 5


def test_max_per_source_caps_every_input(aligned, tmp_path):
    index = write_shards(aligned, tmp_path / "out", max_per_source=12)
    assert sum(index["splits"][s]["n"] for s in SPLITS) == 12


# ----------------------------------------------------------------------------- errors


def test_input_errors(aligned, tmp_path):
    with pytest.raises(SemlayoutError, match="not found"):
        write_shards(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SemlayoutError, match="neither an aligned pair folder"):
        write_shards(tmp_path / "empty", tmp_path / "o")
    raw = make_pairs(tmp_path / "raw", {"a": 3}, aligned=False)
    with pytest.raises(SemlayoutError, match=r"304x304.*no alignment.csv.*semlayout align"):
        write_shards(raw, tmp_path / "o")
    (raw / "alignment.csv").write_text("id,x,y,score,qc_pass,reason\n")
    with pytest.raises(SemlayoutError, match="aligned SEM must be 250x250"):
        write_shards(raw, tmp_path / "o")
    for kw, msg in (
        (dict(val=0.6, test=0.5), "leave pairs"),
        (dict(test=-0.1), "--test"),
        (dict(shard_size=0), "--shard-size"),
        (dict(max_per_source=0), "positive"),
    ):
        with pytest.raises(SemlayoutError, match=msg):
            write_shards(aligned, tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()


def test_failed_run_leaves_existing_output_untouched(aligned, shards, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(shards, out)
    before = (out / "index.json").read_bytes()
    broken = tmp_path / "broken"
    shutil.copytree(aligned, broken)
    victim = next(iter(sorted((broken / "sem").iterdir())))
    victim.write_bytes(b"not a png")
    with pytest.raises(SemlayoutError, match="not a readable image"):
        write_shards(broken, out)
    assert (out / "index.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broken",
        "out",
    ]  # no temp folder left behind


def test_non_binary_layout_refused(aligned, tmp_path):
    import cv2

    bad = tmp_path / "bad"
    shutil.copytree(aligned, bad)
    lay = next(iter(sorted((bad / "layout").iterdir())))
    img = cv2.imread(str(lay), cv2.IMREAD_UNCHANGED)
    img[0, 0] = 128
    cv2.imwrite(str(lay), img)
    with pytest.raises(SemlayoutError, match="only 0 and 255"):
        write_shards(bad, tmp_path / "o")


def test_index_validation(shards, tmp_path):
    with pytest.raises(SemlayoutError, match="shard folder not found"):
        read_index(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(SemlayoutError, match="index.json is missing"):
        read_index(tmp_path / "x")

    def broken(mutate) -> Path:
        d = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(shards, d)
        index = json.loads((d / "index.json").read_text())
        mutate(index, d)
        (d / "index.json").write_text(json.dumps(index))
        return d

    cases = [
        (lambda i, d: i.update(format="other/9"), "format is 'other/9'"),
        (lambda i, d: i["splits"].pop("val"), "split 'val' is missing"),
        (
            lambda i, d: (d / i["splits"]["test"]["shards"][0]).unlink(),
            "shard file test/shard-00000.npz",
        ),
        (lambda i, d: i["splits"]["train"]["shards"].append("../../etc/x.npz"), "relative inside"),
        (lambda i, d: [i["splits"][s].update(n=0, shards=[]) for s in SPLITS], "empty"),
    ]
    for mutate, msg in cases:
        with pytest.raises(SemlayoutError, match=msg):
            read_index(broken(mutate))
    d = tmp_path / "notjson"
    d.mkdir()
    (d / "index.json").write_text("{")
    with pytest.raises(SemlayoutError, match="not valid JSON"):
        read_index(d)


def test_split_errors(shards, tmp_path):
    with pytest.raises(SemlayoutError, match="unknown split 'dev'"):
        next(iter_split(shards, "dev"))
    src = make_pairs(tmp_path / "p", {"a": 6})
    write_shards(src, tmp_path / "noval", val=0.0, test=0.2)
    with pytest.raises(SemlayoutError, match="split 'val' .* has no pairs"):
        load_split_arrays(tmp_path / "noval", "val")
    with pytest.raises(SemlayoutError, match="no pairs from source 'nope'"):
        load_split_arrays(shards, "test", source="nope")


def test_reference_stats_errors(shards, tmp_path):
    with pytest.raises(SemlayoutError, match="reference statistics not found"):
        load_reference_stats(tmp_path)
    bad = tmp_path / "reference_stats.json"
    stats = json.loads((shards / "reference_stats.json").read_text())
    stats["feature_names"] = ["mean"]
    bad.write_text(json.dumps(stats))
    with pytest.raises(SemlayoutError, match="feature_names"):
        load_reference_stats(tmp_path)
    # the per-image features are part of the contract (the drift report and the
    # DriftDetector's calibration without shards read them)
    stats = json.loads((shards / "reference_stats.json").read_text())
    del stats["layout"]["features"]
    bad.write_text(json.dumps(stats))
    with pytest.raises(SemlayoutError, match="missing 'layout' block with mean, std, histogram"):
        load_reference_stats(bad)


# ----------------------------------------------------------------------------- CLI


def test_cli_shard(aligned, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(
        [
            "shard",
            str(aligned),
            "--out",
            str(out),
            "--val",
            "0.1",
            "--test",
            "0.2",
            "--seed",
            "0",
            "--shard-size",
            "8",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "rare" in text and "total" in text
    assert (out / "index.json").is_file() and (out / "reference_stats.json").is_file()


@pytest.mark.parametrize(
    "args,msg",
    [
        (["{missing}"], "input folder not found"),
        (["{empty}"], "neither an aligned pair folder"),
        (["{aligned}", "--val", "0.9", "--test", "0.2"], "leave pairs"),
        (["{aligned}", "--limit", "oops"], "PATH=N"),
    ],
)
def test_cli_errors_one_line_exit_2(args, msg, aligned, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    fmt = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "aligned": aligned}
    argv = ["shard", *[a.format(**fmt) for a in args], "--out", str(tmp_path / "out")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and msg in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_cli_limit_per_source(aligned, tmp_path, capsys):
    rc = cli_main(["shard", str(aligned), "--limit", f"{aligned}=7", "--out", str(tmp_path / "o")])
    assert rc == 0
    assert sum(read_index(tmp_path / "o")["splits"][s]["n"] for s in SPLITS) == 7


def test_tiny_shards_fixture(tiny_shards):
    index = read_index(tiny_shards)
    assert index["splits"]["train"]["n"] > 0 and index["splits"]["test"]["n"] > 0


def test_output_must_not_replace_an_input(aligned, shards, tmp_path):
    with pytest.raises(SemlayoutError, match="would replace the input"):
        write_shards(aligned, aligned)
    with pytest.raises(SemlayoutError, match="would replace the input"):
        write_shards([aligned, shards], aligned.parent)
    assert (aligned / "manifest.csv").is_file() and (shards / "index.json").is_file()


def test_unwritable_output_is_a_user_error(aligned, tmp_path):
    import os

    (tmp_path / "file").write_text("x")
    with pytest.raises(SemlayoutError, match="cannot write"):
        write_shards(aligned, tmp_path / "file" / "out")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(SemlayoutError, match="cannot write"):
            write_shards(aligned, locked / "out")
    finally:
        locked.chmod(0o700)


def test_conftest_fallback_data_shards(tmp_path):
    """The shared fixtures' fallback (no synth / align) still yields a valid shard set."""
    from conftest import _fallback_align, _fallback_pairs

    pairs = _fallback_pairs(tmp_path / "pairs")
    assert read_gray8(read_manifest(pairs)[0].sem_path).shape == (304, 304)
    aligned = _fallback_align(pairs, tmp_path / "aligned")
    index = write_shards(aligned, tmp_path / "shards", val=0.15, test=0.25)
    assert sum(index["splits"][s]["n"] for s in SPLITS) == 24
    assert all(index["splits"][s]["n"] > 0 for s in SPLITS)
    # the truth crop reproduces the template relation of helpers_shards: layout == (sem > 127)
    arrays = load_split_arrays(tmp_path / "shards", "train")
    assert np.array_equal(arrays["layout"] > 0, arrays["sem"] > 127)
