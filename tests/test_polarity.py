"""Contrast polarity as data and as a model input: where each pair's polarity comes from, what
shards and datasets carry, the conditioned generators, what training records, and what the
Translator refuses or decides (`semlayout.polarity`, `polarity_auto`)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers_train import stripes, tiny_config
from torch.utils.data import Dataset

from semlayout.config import apply_overrides
from semlayout.data.dataset import ShardDataset
from semlayout.data.reference_stats import load_reference_stats, polarity_mix
from semlayout.data.shard_format import write_npz
from semlayout.data.shards import iter_split, load_split_arrays, npz_members, read_index
from semlayout.data.shards import write_shards as shard
from semlayout.errors import SemlayoutError
from semlayout.inference import Translator
from semlayout.polarity import CHOICES, PolarityChoice, check_polarity, parse_choice
from semlayout.polarity_auto import (
    FEATURES,
    auto_sem2layout,
    fit_head,
    observed_polarity,
)
from semlayout.polarity_layer import CLIP, LayerPrior
from semlayout.train.checkpoint import build_networks, save_checkpoint
from semlayout.train.loop import run_training
from semlayout.train.polarity_head import SYNTH_PAIRS

# ----------------------------------------------------------------------------- the values


def test_choices_parse_names_and_numbers_and_refuse_the_rest():
    assert [parse_choice(v) for v in ("auto", "BRIGHT", " dark", "+1", "1", "-1", None)] == [
        PolarityChoice.auto,
        PolarityChoice.bright,
        PolarityChoice.dark,
        PolarityChoice.bright,
        PolarityChoice.bright,
        PolarityChoice.dark,
        PolarityChoice.auto,
    ]
    for bad in ("grey", "0", "", "2", "inverted"):
        with pytest.raises(SemlayoutError, match="expected one of auto, bright, dark"):
            parse_choice(bad)
    assert CHOICES == ("auto", "bright", "dark")
    assert check_polarity("-1") == -1 and check_polarity(1.0) == 1
    for bad in (0, True, "x", 2):
        with pytest.raises(SemlayoutError, match=r"\+1 \(bright\) or -1 \(dark\)"):
            check_polarity(bad)


# ----------------------------------------------------------------------------- shards


def _rewrite_csv(path: Path, change: Any) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [change(i, dict(r)) for i, r in enumerate(rows)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def mixed_aligned(tiny_aligned: Path, tmp_path: Path) -> Path:
    """tiny_aligned with every third pair declared dark (`declared_polarity`, what the data
    says, e.g. synth's physics) and the aligner's reading (`polarity`) the opposite."""
    dest = tmp_path / "aligned"
    shutil.copytree(tiny_aligned, dest)

    def declare(i: int, row: dict[str, str]) -> dict[str, str]:
        row["declared_polarity"] = "-1" if i % 3 == 0 else "1"
        row["polarity"], row["polarity_source"] = ("1" if i % 3 == 0 else "-1"), "pair"
        return row

    _rewrite_csv(dest / "manifest.csv", declare)
    return dest


def _declared(folder: Path, column: str = "declared_polarity") -> dict[str, int]:
    with open(folder / "manifest.csv", newline="") as f:
        return {r["id"]: int(r[column]) for r in csv.DictReader(f)}


def _without(*columns: str) -> Any:
    return lambda i, r: {k: v for k, v in r.items() if k not in columns}


def test_shards_carry_each_pairs_declared_polarity_over_the_aligners(mixed_aligned, tmp_path):
    out = tmp_path / "shards"
    index = shard(mixed_aligned, out, val=0.15, test=0.25, seed=0, shard_size=8)
    declared = _declared(mixed_aligned)
    got: dict[str, int] = {}
    for split in ("train", "val", "test"):
        for rec in iter_split(out, split):
            got[rec["id"]] = rec["polarity"]
        counts = index["splits"][split]["polarity"]
        arr = load_split_arrays(out, split)["polarity"]
        assert arr.dtype == np.int8
        assert counts == {"+1": int((arr == 1).sum()), "-1": int((arr == -1).sum())}
    passed = set(got)
    assert got == {k: v for k, v in declared.items() if k in passed}
    assert index["polarity"] == {
        "+1": sum(v == 1 for v in got.values()),
        "-1": sum(v == -1 for v in got.values()),
    }
    assert index["polarity_sources"] == {"declared": len(got)}
    ds = ShardDataset(out, "train", image_size=64)
    assert [float(ds[i]["polarity"]) for i in range(len(ds))] == [float(got[pid]) for pid in ds.ids]
    assert set(ds.polarities) == set(ds.item_polarities)
    ref = load_reference_stats(out)
    train_pols = [got[pid] for pid in ds.ids]
    assert polarity_mix(ref) == {"+1": train_pols.count(1), "-1": train_pols.count(-1)}
    assert {k: v["n"] for k, v in ref["sem_by_polarity"].items()} == {
        k: v for k, v in polarity_mix(ref).items() if v
    }


def test_without_a_declared_polarity_the_aligners_reading_is_used(mixed_aligned, tmp_path):
    """Real data declares none: the aligned manifest's `polarity` (the aligner's), with the
    aligner's source."""
    _rewrite_csv(mixed_aligned / "manifest.csv", _without("declared_polarity"))
    aligner = _declared(mixed_aligned, "polarity")
    index = shard(mixed_aligned, tmp_path / "shards", val=0.15, test=0.25, seed=0)
    assert index["polarity_sources"] == {"pair": len(aligner)}
    recs = [r for s in ("train", "val", "test") for r in iter_split(tmp_path / "shards", s)]
    assert all(r["polarity"] == aligner[r["id"]] for r in recs)


def test_a_folder_that_was_not_aligned_declares_its_polarity_in_its_own_column(
    mixed_aligned, tmp_path
):
    (mixed_aligned / "alignment.csv").unlink()  # SEMs already 250 px: a plain pair folder
    _rewrite_csv(mixed_aligned / "manifest.csv", _without("declared_polarity", "polarity_source"))
    index = shard(mixed_aligned, tmp_path / "shards", val=0.15, test=0.25, seed=0)
    assert set(index["polarity_sources"]) == {"declared"}


def test_alignment_polarity_is_used_when_the_manifest_has_none(tiny_aligned, tmp_path):
    aligned = tmp_path / "aligned"
    shutil.copytree(tiny_aligned, aligned)
    _rewrite_csv(
        aligned / "manifest.csv", _without("polarity", "declared_polarity", "polarity_source")
    )
    with open(aligned / "alignment.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        r["polarity"] = "-1" if i % 2 else "1"
    with open(aligned / "alignment.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    aligner = {r["id"]: int(r["polarity"]) for r in rows}
    index = shard(aligned, tmp_path / "shards", val=0.15, test=0.25, seed=0)
    assert set(index["polarity_sources"]) == {"alignment"}
    recs = [r for s in ("train", "val", "test") for r in iter_split(tmp_path / "shards", s)]
    assert all(r["polarity"] == aligner[r["id"]] for r in recs)


def test_data_without_polarity_reads_as_bright_and_says_so(tiny_aligned, tmp_path):
    aligned = tmp_path / "aligned"
    shutil.copytree(tiny_aligned, aligned)
    _rewrite_csv(aligned / "manifest.csv", _without("polarity", "declared_polarity"))
    _rewrite_csv(aligned / "alignment.csv", _without("polarity"))
    index = shard(aligned, tmp_path / "shards", val=0.15, test=0.25, seed=0)
    assert set(index["polarity_sources"]) == {"assumed"} and index["polarity"]["-1"] == 0


def test_a_shard_set_written_before_polarity_reads_as_bright(mixed_aligned, tmp_path):
    out = tmp_path / "shards"
    shard(mixed_aligned, out, val=0.15, test=0.25, seed=0, shard_size=8)
    index = read_index(out)
    for split in ("train", "val", "test"):  # what an older semlayout wrote: no polarity member
        for rel in index["splits"][split]["shards"]:
            members = {k: np.array(v) for k, v in npz_members(out / rel).items()}
            del members["polarity"]
            write_npz(out / rel, members)
    ref = json.loads((out / "reference_stats.json").read_text())
    for k in ("polarity", "sem_by_polarity"):
        del ref[k]
    (out / "reference_stats.json").write_text(json.dumps(ref))
    assert {r["polarity"] for r in iter_split(out, "train")} == {1}
    assert set(ShardDataset(out, "train", image_size=64).item_polarities) == {1}
    n_train = index["splits"]["train"]["n"]
    assert polarity_mix(load_reference_stats(out)) == {"+1": n_train, "-1": 0}
    # and a new shard set made from it (a replay sample) records where that came from
    again = shard(out, tmp_path / "again", val=0.0, test=0.0, seed=0)
    assert again["polarity_sources"] == {"assumed": n_train}


# ----------------------------------------------------------------------------- networks


def _cfg(conditioning: str, flip: bool = False, **train: Any):
    cfg = tiny_config(**train)
    return apply_overrides(
        cfg,
        {"generator.polarity_conditioning": conditioning, "generator.polarity_flip": flip},
    )


@pytest.mark.parametrize("conditioning", ["channel", "film"])
def test_conditioned_generators_answer_per_polarity(conditioning):
    torch.manual_seed(0)
    nets = build_networks(_cfg(conditioning, flip=True))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    for name in ("G_A", "G_B"):
        g = nets[name].eval()
        with torch.no_grad():
            bright = g(x, torch.tensor([1.0, 1.0]))
            dark = g(x, torch.tensor([-1.0, -1.0]))
            mixed = g(x, torch.tensor([1.0, -1.0]))
        assert not torch.allclose(bright, dark)
        torch.testing.assert_close(mixed[0], bright[0])  # each image its own polarity
        torch.testing.assert_close(mixed[1], dark[1])
        with pytest.raises(ValueError, match="pass polarity"):
            g(x)


def test_film_starts_as_the_identity_and_flip_mirrors_the_sem_side():
    torch.manual_seed(0)
    film = build_networks(_cfg("film"))["G_A"].eval()
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(film(x, torch.ones(1)), film(x, -torch.ones(1)))
    torch.manual_seed(0)
    nets = build_networks(_cfg("film", flip=True))
    g_a, g_b = nets["G_A"].eval(), nets["G_B"].eval()
    with torch.no_grad():  # FiLM at init is the identity: only the flip differs
        torch.testing.assert_close(g_a(x, -torch.ones(1)), g_a(-x, torch.ones(1)))
        torch.testing.assert_close(g_b(x, -torch.ones(1)), -g_b(x, torch.ones(1)))
    plain = build_networks(tiny_config())["G_A"].eval()
    with torch.no_grad():  # an unconditioned network ignores polarity
        torch.testing.assert_close(plain(x, -torch.ones(1)), plain(x))


class MixedPairs(Dataset):
    """Stripes, every other pair imaged dark (the 'SEM' inverted)."""

    def __init__(self, n: int = 8):
        rng = np.random.default_rng(3)
        self.items = []
        for i in range(n):
            sem, lay = stripes(rng, 32)
            pol = -1 if i % 2 else 1
            self.items.append((sem * pol, lay, pol))
        self.item_families = ["lines"] * n
        self.item_polarities = [p for *_, p in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sem, lay, pol = self.items[i]
        return {
            "sem": torch.from_numpy(np.ascontiguousarray(sem))[None],
            "layout": torch.from_numpy(lay)[None],
            "polarity": torch.tensor(float(pol)),
            "family": "lines",
            "id": f"p{i}",
        }


def test_training_on_both_polarities_needs_a_conditioned_network(tmp_path):
    with pytest.raises(SemlayoutError, match="polarity_conditioning is 'none'"):
        run_training(tiny_config(max_steps=2), MixedPairs(), tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "final").exists()


def test_training_records_the_learned_polarities_and_stays_deterministic(tmp_path):
    cfg = _cfg("film", flip=True, max_steps=6, checkpoint_every=3)
    finals = [
        run_training(cfg, MixedPairs(), tmp_path / name, progress=False) for name in ("a", "b")
    ]
    meta = [json.loads((f / "config.json").read_text()) for f in finals]
    assert meta[0]["config"]["polarity"]["learned"] == [1, -1]
    assert (finals[0] / "weights.safetensors").read_bytes() == (
        finals[1] / "weights.safetensors"
    ).read_bytes()


# ----------------------------------------------------------------------------- the Translator


def _checkpoint(dest: Path, conditioning: str = "none", learned: list[int] | None = None) -> Path:
    cfg = _cfg(conditioning, flip=conditioning != "none")
    if learned is not None:
        cfg = apply_overrides(cfg, {"polarity.learned": learned})
    torch.manual_seed(1)
    return Path(save_checkpoint(dest, cfg, build_networks(cfg), step=1, epoch=0))


def _sems(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (40, 36), dtype=np.uint8) for _ in range(n)]


def test_a_model_refuses_a_polarity_it_never_learned(tmp_path):
    tr = Translator.load(_checkpoint(tmp_path / "bright", learned=[1]))
    assert tr.polarities == (1,)
    with pytest.raises(SemlayoutError, match=r"learned bright \(\+1\) contrast only"):
        tr.translate("sem2layout", _sems(), polarity="dark")
    with pytest.raises(SemlayoutError, match="learned bright"):
        tr.translate("layout2sem", _sems(), polarity=-1)
    with pytest.raises(SemlayoutError, match="is the layer's"):
        tr.translate("sem2layout", _sems(), prior=-1)
    done = tr.translate_detailed("sem2layout", _sems())  # auto: the one polarity it knows
    assert {(t.decision.polarity, t.decision.source, t.decision.margin) for t in done} == {
        (1, "only", None)
    }


def test_an_old_checkpoint_loads_and_serves_bright_only(tmp_path):
    ckpt = _checkpoint(tmp_path / "old")
    meta = json.loads((ckpt / "config.json").read_text())
    del meta["config"]["polarity"]  # what a checkpoint made before polarity looked like
    for key in ("polarity_conditioning", "polarity_flip"):
        del meta["config"]["generator"][key]
    (ckpt / "config.json").write_text(json.dumps(meta))
    tr = Translator.load(ckpt)
    assert tr.polarities == (1,) and tr.info["polarities"] == [1]
    out = tr.translate("sem2layout", _sems(), polarity="bright")
    assert [o.shape for o in out] == [(40, 36)] * 3
    with pytest.raises(SemlayoutError, match="learned bright"):
        tr.translate("sem2layout", _sems(), polarity="dark")


def test_a_model_of_both_polarities_translates_each_and_decides_auto(tmp_path):
    tr = Translator.load(_checkpoint(tmp_path / "both", "film", learned=[1, -1]))
    sems = _sems()
    bright = tr.translate("sem2layout", sems, polarity="bright")
    dark = tr.translate("sem2layout", sems, polarity="dark")
    assert any(not np.array_equal(b, d) for b, d in zip(bright, dark, strict=True))
    done = tr.translate_detailed("sem2layout", sems)  # auto
    for t, b, d in zip(done, bright, dark, strict=True):
        dec = t.decision
        assert dec.source == "auto" and dec.margin is not None and dec.evidence is not None
        assert dec.margin == pytest.approx(min(abs(dec.evidence), CLIP))  # counted clipped
        assert np.array_equal(t.output, b if dec.polarity == 1 else d)
    # layout2sem: nothing in a layout says how it images -> the layer's polarity, else bright
    assert {t.decision.polarity for t in tr.translate_detailed("layout2sem", sems)} == {1}
    dark_layer = tr.translate_detailed("layout2sem", sems, prior=-1)
    assert {(t.decision.polarity, t.decision.source) for t in dark_layer} == {(-1, "layer")}
    assert tr.translate("layout2sem", sems, prior=-1)[0].tolist() == (
        tr.translate("layout2sem", sems, polarity="dark")[0].tolist()
    )


def test_onnx_runs_both_polarities_like_eager(tmp_path):
    ckpt = _checkpoint(tmp_path / "both", "channel", learned=[1, -1])
    eager, onnx = Translator.load(ckpt), Translator.load(ckpt, backend="onnx")
    batch = np.random.default_rng(2).uniform(-1, 1, (3, 1, 32, 32)).astype(np.float32)
    pol = np.array([1, -1, -1], np.float32)
    for d in ("sem2layout", "layout2sem"):
        np.testing.assert_allclose(
            onnx.run_batch(d, batch, pol), eager.run_batch(d, batch, pol), atol=1e-4
        )


def test_auto_picks_the_hypothesis_whose_rendering_explains_the_image():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4, 1, 32, 32)).astype(np.float32)
    noise = rng.uniform(-1, 1, x.shape).astype(np.float32)

    def run_a(b: np.ndarray, p: np.ndarray) -> np.ndarray:
        return b * p[:, None, None, None]  # the 'layout' read in polarity p

    def renders(truth: int):  # G_B: only the true polarity re-renders the image
        def run_b(lay: np.ndarray, p: np.ndarray) -> np.ndarray:
            return np.where(p[:, None, None, None] == truth, lay * truth, noise)

        return run_b

    for truth in (1, -1):
        out, decisions = auto_sem2layout(run_a, renders(truth), x)
        assert [d.polarity for d in decisions] == [truth] * 4
        np.testing.assert_array_equal(out, x * truth)
        assert all(d.margin > 2 and np.sign(d.evidence) == truth for d in decisions)
        assert {d.source for d in decisions} == {"auto"}  # no layer evidence: the image alone
        # a configured layer polarity is the strongest word: the image is translated in it,
        # and its own reading (what drift judges) is still the truth
        out, against = auto_sem2layout(run_a, renders(truth), x, prior=-truth)
        assert [(d.polarity, d.source) for d in against] == [(-truth, "layer")] * 4
        np.testing.assert_array_equal(out, -x * truth)
        assert observed_polarity(against[0]) == truth
        # pooled evidence adds to the image's, which counts at most CLIP: a layer whose
        # evidence is stronger outweighs any one image
        e = float(np.clip(against[0].evidence, -CLIP, CLIP))
        _, pooled = auto_sem2layout(run_a, renders(truth), x, LayerPrior(None, -2 * e, 5))
        assert [(d.polarity, d.source) for d in pooled] == [(-truth, "pooled")] * 4
        assert pooled[0].margin == pytest.approx(abs(e), rel=1e-6)


def test_a_layer_prior_settles_an_image_that_cannot_tell():
    x = np.random.default_rng(1).uniform(-1, 1, (2, 1, 32, 32)).astype(np.float32)

    def run_a(b: np.ndarray, p: np.ndarray) -> np.ndarray:
        return b

    def run_b(lay: np.ndarray, p: np.ndarray) -> np.ndarray:
        return lay  # both hypotheses render the image exactly: no evidence either way

    for prior in (1, -1):
        _, decisions = auto_sem2layout(run_a, run_b, x, prior=prior)
        assert [(d.polarity, d.source) for d in decisions] == [(prior, "layer")] * 2
        _, decisions = auto_sem2layout(run_a, run_b, x, prior=LayerPrior(None, 3.0 * prior, 4))
        assert [(d.polarity, d.source) for d in decisions] == [(prior, "pooled")] * 2
        assert decisions[0].margin == pytest.approx(3.0)
        assert observed_polarity(decisions[0]) is None  # the image itself said nothing


def test_the_head_is_a_calibrated_logistic_regression():
    rng = np.random.default_rng(0)
    pol = np.where(rng.random(200) < 0.5, 1, -1)
    feats = rng.normal(0, 1, (200, len(FEATURES)))
    feats[:, 0] += 0.8 * pol  # one informative feature, offset so the raw sign would be biased
    feats[:, 0] += 3.0
    head = fit_head(feats, pol)
    z = (feats - np.array(head["mean"])) / np.array(head["scale"])
    logit = z @ np.array(head["weights"]) + head["bias"]
    right = (logit >= 0) == (pol > 0)
    assert head["accuracy"] == pytest.approx(
        np.mean([right[pol > 0].mean(), right[pol < 0].mean()])
    )
    assert head["accuracy"] > 0.6 and head["weights"][0] > 0
    assert fit_head(feats, pol) == head  # deterministic
    # the polarities weigh the same whatever their counts: 9 bright images for 1 dark and
    # features that say nothing give log-odds ~0 (a likelihood ratio, no base rate to pool)
    skewed = np.where(np.arange(2000) % 10 == 0, -1, 1)
    flat = fit_head(rng.normal(0, 1, (2000, len(FEATURES))), skewed)
    assert abs(flat["bias"]) < 0.2  # unweighted, it would be log(9) = 2.2


def test_training_on_both_polarities_fits_autos_head_on_the_val_split(tmp_path):
    cfg = _cfg("film", flip=True, max_steps=4, checkpoint_every=4)
    final = run_training(cfg, MixedPairs(8), tmp_path / "r", val_ds=MixedPairs(20), progress=False)
    head = json.loads((final / "config.json").read_text())["config"]["polarity"]["auto_head"]
    # the val split plus fresh synthetic pairs of both polarities drawn at fit time
    assert head["n"] == 20 + SYNTH_PAIRS and len(head["weights"]) == len(FEATURES)
    tr = Translator.load(final)
    assert tr.config.polarity.auto_head is not None
    done = tr.translate_detailed("sem2layout", _sems())
    assert all(t.decision.source == "auto" for t in done)
    few = run_training(cfg, MixedPairs(8), tmp_path / "few", val_ds=MixedPairs(6), progress=False)
    # a val split with few reversed pairs still gets a head: the synthetic ones are balanced
    few_head = json.loads((few / "config.json").read_text())["config"]["polarity"]["auto_head"]
    assert few_head["n"] == 6 + SYNTH_PAIRS


def test_the_drift_monitor_flags_a_stream_whose_polarity_flipped():
    from semlayout.monitoring.drift import DriftDetector, DriftResult
    from semlayout.polarity_auto import PolarityDecision
    from semlayout.polarity_layer import CLIP, CUSUM_H

    def detector() -> DriftDetector:
        return DriftDetector(
            {"mean": 0.5}, {"mean": 0.1}, [0.5, 0.5], "sem", expected_polarity=1,
            feature_fn=lambda im: {"mean": 0.5}, histogram_fn=lambda im: np.array([0.5, 0.5]),
        )  # fmt: skip

    quiet = DriftResult(False, 0.1, 0.1, "mean", 0.0, {}, {})

    def auto(evidence: float) -> PolarityDecision:
        return PolarityDecision(1 if evidence >= 0 else -1, "auto", abs(evidence), evidence)

    det = detector()  # a bright layer whose images read dark 3 times in 4: flagged, and stays
    flags = [det.with_polarity(quiet, auto(-2.0 if i % 4 else 2.0)).drifted for i in range(40)]
    first = flags.index(True)
    assert CUSUM_H / 2.0 <= first <= 2 * CUSUM_H and all(flags[first:])
    det = detector()  # the same layer reading bright 3 times in 4: never
    assert not any(
        det.with_polarity(quiet, auto(2.0 if i % 4 else -2.0)).drifted for i in range(40)
    )
    det = detector()  # one image, however sure, is no flipped stream (its evidence is clipped)
    assert not det.with_polarity(quiet, auto(-50.0)).drifted and CLIP < CUSUM_H
    det = detector()  # evidence that says nothing on balance does not accumulate
    assert not any(det.with_polarity(quiet, auto((-1) ** i * 0.5)).drifted for i in range(200))
    # the layer's own test, when the server passes it, is what counts
    assert det.with_polarity(quiet, auto(2.0), expected=1, flipped=True).drifted
    assert not det.with_polarity(quiet, auto(-2.0), expected=1, flipped=False).drifted
    # the caller's word is enough: a given dark image on a bright layer is drift at once
    given = detector().with_polarity(quiet, PolarityDecision(-1, "given"))
    assert given.drifted and given.worst_feature == "polarity" and given.score > 1
    unjudged = DriftDetector({"mean": 0.5}, {"mean": 0.1}, [0.5, 0.5], "sem")
    assert unjudged.with_polarity(quiet, PolarityDecision(-1, "given")) == quiet
