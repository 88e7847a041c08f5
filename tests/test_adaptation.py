"""The fine-tune recipe (semlayout.train.adaptation), content splits of reviewed pairs and the
paired-bootstrap fine-tune gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers_train import tiny_config

from semlayout.errors import SemlayoutError
from semlayout.gate import gate_config, judge_finetune, paired_bootstrap
from semlayout.train.recipe import AdaptConfig, adapt_config


# ---------------------------------------------------------------- content splits
def _pairs_from_shards(shards: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    from semlayout.data.shards import load_split_arrays

    out = []
    for split in ("train", "val", "test"):
        d = load_split_arrays(shards, split)
        out += [(d["sem"][i], d["layout"][i], str(d["families"][i])) for i in range(len(d["ids"]))]
    return out


def _folder(dest: Path, pairs: list[tuple[np.ndarray, np.ndarray, str]], ids: list[str]) -> Path:
    from semlayout.data.pairs import PairArrays, write_pair_folder

    write_pair_folder(
        dest, (PairArrays(i, s, lay, fam) for i, (s, lay, fam) in zip(ids, pairs, strict=True))
    )
    return dest


def _split_by_content(shards: Path) -> dict[str, str]:
    from semlayout.data.shards import content_hash, load_split_arrays

    out = {}
    for split in ("train", "val", "test"):
        d = load_split_arrays(shards, split)
        for i in range(len(d["ids"])):
            out[content_hash(d["sem"][i], d["layout"][i])] = split
    return out


def test_reviewed_pairs_split_by_content_whatever_their_ids(
    tiny_shards: Path, tmp_path: Path
) -> None:
    from semlayout.data.shards import write_shards

    pairs = _pairs_from_shards(tiny_shards)
    rng = np.random.default_rng(7)
    perm = rng.permutation(len(pairs))
    a = _folder(tmp_path / "a", pairs, [f"fb-{i:04d}" for i in range(len(pairs))])
    b = _folder(tmp_path / "b", [pairs[i] for i in perm], [f"x{rng.integers(1e9)}" for _ in pairs])
    splits = {}
    for how in ("content", "id"):
        for name, folder in (("a", a), ("b", b)):
            out = tmp_path / f"{name}-{how}"
            write_shards(folder, out, val=0.15, test=0.25, seed=0, split_by=how)
            splits[(name, how)] = _split_by_content(out)
    assert splits[("a", "content")] == splits[("b", "content")]
    assert set(splits[("a", "content")].values()) == {"train", "val", "test"}
    # by id (the old way) the same pairs under new ids land elsewhere: the coin flip of issue 21
    assert splits[("a", "id")] != splits[("b", "id")]
    with pytest.raises(SemlayoutError, match="split_by"):
        write_shards(a, tmp_path / "bad", split_by="name")


# ---------------------------------------------------------------- the paired gate
def _ev(per_pair: dict[str, list[float]], ids: list[str]) -> dict[str, Any]:
    """An evaluate_model-shaped result with per-pair SSIM for both directions."""
    out: dict[str, Any] = {"per_pair": {"ids": ids, "families": ["f"] * len(ids)}}
    for d, values in per_pair.items():
        out[d] = {"ssim": float(np.mean(values))}
        out["per_pair"][d] = {"ssim": list(values)}
    return out


def _case(new_delta: np.ndarray, orig_delta: np.ndarray) -> tuple[dict[str, Any], ...]:
    rng = np.random.default_rng(0)
    base_new = rng.uniform(0.5, 0.7, new_delta.size)
    base_orig = rng.uniform(0.7, 0.8, orig_delta.size)
    ids_n = [f"n{i}" for i in range(new_delta.size)]
    ids_o = [f"o{i}" for i in range(orig_delta.size)]
    both = ("sem2layout", "layout2sem")
    return (
        _ev({d: base_new + new_delta for d in both}, ids_n),
        _ev({d: base_new for d in both}, ids_n),
        _ev({d: base_orig + orig_delta for d in both}, ids_o),
        _ev({d: base_orig for d in both}, ids_o),
    )


CFG = gate_config(floors={"sem2layout": 0.1, "layout2sem": 0.1}, tolerance=0.01)


def test_paired_gate_passes_a_consistent_gain_and_says_how_sure() -> None:
    rng = np.random.default_rng(1)
    args = _case(0.03 + rng.normal(0, 0.01, 12), rng.normal(0, 0.002, 60))
    r = judge_finetune(*args, CFG)
    assert r.passed, r.reasons
    j = r.judged["sem2layout"]
    assert j["paired"] and j["p_improved"] >= 0.95 and j["new_ci95"][0] > 0
    assert j["p_kept"] >= 0.95 and j["new_n"] == 12 and j["orig_n"] == 60
    assert any("95% CI" in x and "P = " in x for x in r.reasons)
    assert r.confidence() == min(
        r.judged[d][k] for d in ("sem2layout", "layout2sem") for k in ("p_improved", "p_kept")
    )  # both improved here
    assert (
        judge_finetune(
            *[{k: v for k, v in a.items() if k != "per_pair"} for a in args], CFG
        ).confidence()
        is None
    )


def test_paired_gate_refuses_a_gain_within_noise_the_mean_gate_would_take() -> None:
    rng = np.random.default_rng(2)
    noisy = 0.01 + rng.normal(0, 0.08, 10)
    noisy += 0.01 - noisy.mean()  # mean gain exactly +0.01: the means alone would pass
    args = _case(noisy, rng.normal(0, 0.002, 60))
    r = judge_finetune(*args, CFG)
    assert not r.passed and r.judged["sem2layout"]["p_improved"] < 0.95
    assert any("no sure improvement" in x for x in r.reasons)
    no_pairs = [{k: v for k, v in a.items() if k != "per_pair"} for a in args]
    assert judge_finetune(*no_pairs, CFG).passed  # the old mean comparison: a coin flip


def test_paired_gate_refuses_a_loss_near_the_tolerance() -> None:
    rng = np.random.default_rng(3)
    r = judge_finetune(
        *_case(0.05 + rng.normal(0, 0.01, 12), -0.011 + rng.normal(0, 0.002, 60)), CFG
    )
    assert not r.passed and r.judged["layout2sem"]["p_kept"] < 0.95
    assert any("may lose too much" in x for x in r.reasons)


def test_paired_gate_verdict_is_reproducible() -> None:
    rng = np.random.default_rng(4)
    args = _case(0.004 + rng.normal(0, 0.01, 10), rng.normal(0, 0.003, 40))
    verdicts = {judge_finetune(*args, CFG).to_json() for _ in range(5)}
    assert len(verdicts) == 1


def test_paired_bootstrap_interval_covers_the_mean() -> None:
    d = np.random.default_rng(5).normal(0.02, 0.01, 30)
    b = paired_bootstrap(list(d), [0.0] * 30, 2000)
    assert b is not None and b["ci95"][0] < b["delta"] < b["ci95"][1]
    assert abs(b["delta"] - d.mean()) < 1e-12
    assert paired_bootstrap([0.5], [0.4], 2000) is None


# ---------------------------------------------------------------- the recipe
def test_recipe_config_errors_are_one_line() -> None:
    assert adapt_config({}) == AdaptConfig()
    with pytest.raises(SemlayoutError, match="freeze") as err:
        adapt_config({"freeze": "everything"})
    assert "\n" not in str(err.value)
    with pytest.raises(SemlayoutError, match="stepz"):
        adapt_config({"stepz": 3})


def test_weight_average_and_anchor_pull() -> None:
    from semlayout.train.adaptation import AnchorPull, WeightAverage
    from semlayout.train.checkpoint import build_networks

    nets = build_networks(tiny_config())
    ema = WeightAverage(nets, decay=0.5)
    pull = AnchorPull(nets, strength=1.0)
    p = next(nets["G_A"].parameters())
    start = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)
    ema.update(nets)
    assert torch.allclose(next(ema.nets["G_A"].parameters()), start + 0.5)
    pull.apply(lr=0.25)  # w <- w - 0.25 * (w - w0)
    assert torch.allclose(p, start + 0.75, atol=1e-6)
    pull.apply(lr=1.0)
    assert torch.allclose(p, start, atol=1e-6)


def test_mixed_batches_hold_the_replay_share() -> None:
    from semlayout.train.adaptation import MixedBatches

    def items(value: float, n: int) -> list[dict[str, torch.Tensor]]:
        sem, pol = torch.full((1, 4, 4), value), torch.tensor(value)
        return [{"sem": sem, "layout": torch.zeros(1, 4, 4), "polarity": pol}] * n

    mb = MixedBatches(
        items(1.0, 6), items(-1.0, 50), AdaptConfig(batch_size=4, replay_fraction=0.25)
    )
    for _ in range(5):
        sem, _, pol, prof = mb.next()
        assert prof is None  # no profile: the shared network
        assert (sem[:, 0, 0, 0] == -1).sum() == 1 and sem.shape[0] == 4
        assert torch.equal(pol, sem[:, 0, 0, 0])  # each pair keeps its own polarity
    solo = MixedBatches(items(1.0, 6), None, AdaptConfig(batch_size=4))
    assert (solo.next()[0] == 1).all()


def _champion(tmp_path: Path) -> Path:
    from semlayout.train.checkpoint import build_networks, save_checkpoint

    cfg = tiny_config()
    torch.manual_seed(0)
    return Path(save_checkpoint(tmp_path / "champion", cfg, build_networks(cfg), 0, 0))


def test_adapt_keeps_the_encoder_frozen_and_writes_its_curve(
    tiny_shards: Path, tmp_path: Path
) -> None:
    from semlayout.train.adaptation import adapt
    from semlayout.train.checkpoint import load_checkpoint

    champ = _champion(tmp_path)
    acfg = AdaptConfig(steps=6, lr=1e-2, batch_size=2, crop_size=None, eval_every=2,
                       freeze="encoder", replay_fraction=0.5, eval_pairs=4)  # fmt: skip
    res = adapt(champ, tiny_shards, tmp_path / "out", acfg, replay_shards=tiny_shards)
    assert [r["step"] for r in res.curve] == [0, 2, 4, 6]
    assert res.best_step in (0, 2, 4, 6) and res.steps_run == 6
    assert res.curve[0]["eligible"]  # the champion itself is always a candidate
    best = max(
        (r for r in res.curve if r["eligible"]),
        key=lambda r: r["val_reviewed_sem2layout_ssim"] + r["val_reviewed_layout2sem_ssim_lowpass"],
    )
    assert res.best_step == best["step"]
    assert "val_original_sem2layout_ssim" in res.curve[-1]
    history = json.loads((res.path / "history.json").read_text())
    assert history["epochs"] == res.curve
    assert json.loads((res.path / "adaptation.json").read_text())["config"]["freeze"] == "encoder"
    _, before, _ = load_checkpoint(champ)
    _, after, _ = load_checkpoint(res.path)
    # the encoder's weights stay the champion's (its BatchNorm statistics follow the new data)
    old_params = dict(before["G_A"].named_parameters())
    enc = {k: v for k, v in after["G_A"].named_parameters() if k.startswith("down.")}
    assert enc and all(torch.equal(v, old_params[k]) for k, v in enc.items())
    if res.best_step > 0:  # the decoder did move
        dec = [k for k in after["G_A"].state_dict() if k.startswith("up.") and "weight" in k]
        assert any(
            not torch.equal(after["G_A"].state_dict()[k], before["G_A"].state_dict()[k])
            for k in dec
        )


def test_adapt_is_reproducible_so_a_rerun_gets_the_same_verdict(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """Same pairs (the content split gives the same shards), same recipe -> the same weights,
    hence the same scores and the same (seeded) bootstrap verdict on a re-run."""
    from safetensors.torch import load_file

    from semlayout.train.adaptation import adapt

    champ = _champion(tmp_path)
    acfg = AdaptConfig(steps=3, lr=1e-3, batch_size=2, crop_size=16, eval_every=3,
                       ema_decay=0.5, l2sp=1.0, eval_pairs=2)  # fmt: skip
    runs = [adapt(champ, tiny_shards, tmp_path / f"run{i}", acfg, tiny_shards) for i in (1, 2)]
    w1, w2 = (load_file(r.path / "weights.safetensors") for r in runs)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert runs[0].curve[-1] == {**runs[1].curve[-1], "seconds": runs[0].curve[-1]["seconds"]}
    other = adapt(champ, tiny_shards, tmp_path / "seed1", acfg.model_copy(update={"seed": 1}))
    w3 = load_file(other.path / "weights.safetensors")
    assert any(not torch.equal(w1[k], w3[k]) for k in w1 if k.startswith("G_A"))


def test_weights_that_forget_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The best reviewed score wins only among steps within the forgetting budget."""
    from semlayout.train import adaptation

    # (reviewed SSIM, original SSIM) per evaluation: step 3 is best on the new pairs but forgot
    script = [(0.50, 0.80), (0.60, 0.80), (0.55, 0.795), (0.70, 0.75), (0.58, 0.80)]
    now = {"step": 0}

    def fake(g_a: Any, g_b: Any, ds: str, n: int, row: int | None = None) -> dict[str, float]:
        v = script[now["step"]][0 if ds == "new" else 1]
        return {"sem2layout_ssim": v, "layout2sem_ssim": v, "layout2sem_ssim_lowpass": v,
                "sem2layout_iou": v}  # fmt: skip

    monkeypatch.setattr(adaptation, "held_out_scores", fake)
    net = torch.nn.Linear(1, 1)
    for budget, expected in ((0.01, 1), (None, 3)):
        ev = adaptation._Evaluator("new", "orig", 4, budget)
        for step in range(len(script)):
            now["step"] = step
            record: dict[str, Any] = {}
            ev(step, {"G_A": net, "G_B": net}, record)
            assert record["eligible"] == (budget is None or script[step][1] >= 0.79)
        assert ev.best_step == expected, (budget, ev.best_step)


def test_paired_gate_one_direction_gains_the_other_holds() -> None:
    """Layout->SEM against a low-dose SEM barely moves: a sure SEM->Layout gain with
    Layout->SEM surely not worse passes under gain_in="any", not under "every"."""
    rng = np.random.default_rng(6)
    new_a, new_b, orig_a, orig_b = _case(np.zeros(12), rng.normal(0, 0.002, 60))
    new_a["per_pair"]["sem2layout"]["ssim"] = list(
        np.array(new_b["per_pair"]["sem2layout"]["ssim"]) + 0.05 + rng.normal(0, 0.01, 12)
    )
    new_a["per_pair"]["layout2sem"]["ssim"] = list(
        np.array(new_b["per_pair"]["layout2sem"]["ssim"]) + rng.normal(0, 0.003, 12)
    )
    r = judge_finetune(new_a, new_b, orig_a, orig_b, CFG)
    assert r.passed, r.reasons
    assert not r.judged["layout2sem"]["improved"] and r.judged["layout2sem"]["p_not_worse"] >= 0.95
    j = r.judged
    assert r.confidence() == min(
        j["sem2layout"]["p_improved"], j["layout2sem"]["p_not_worse"],
        j["sem2layout"]["p_kept"], j["layout2sem"]["p_kept"],
    )  # fmt: skip
    every = CFG.model_copy(update={"gain_in": "every"})
    assert not judge_finetune(new_a, new_b, orig_a, orig_b, every).passed
    new_a["per_pair"]["layout2sem"]["ssim"] = list(
        np.array(new_b["per_pair"]["layout2sem"]["ssim"]) - 0.03 + rng.normal(0, 0.003, 12)
    )
    worse = judge_finetune(new_a, new_b, orig_a, orig_b, CFG)
    assert not worse.passed and any("may be worse" in x for x in worse.reasons)


def test_a_direction_left_out_keeps_the_champions_generator(
    tiny_shards: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from semlayout.train.adaptation import adapt

    champ = _champion(tmp_path)
    acfg = AdaptConfig(steps=3, lr=1e-2, batch_size=2, crop_size=None, eval_every=3,
                       directions=["sem2layout"], eval_pairs=2, forget_budget=None)  # fmt: skip
    res = adapt(champ, tiny_shards, tmp_path / "out", acfg)
    before, after = (
        load_file(champ / "weights.safetensors"),
        load_file(res.path / "weights.safetensors"),
    )
    g_b = [k for k in before if k.startswith("G_B.")]
    assert g_b and all(torch.equal(before[k], after[k]) for k in g_b)  # running stats too
    assert res.steps_run == 3
    # the discriminators trained all the same (what is saved with the best step's generators)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("D_A."))


def test_a_polarity_conditioned_champion_adapts_on_dark_reviewed_pairs(
    tiny_aligned: Path, tmp_path: Path
) -> None:
    """Reviewed pairs of reversed contrast reach the generators with their polarity, and the
    challenger records that it learned it (it would otherwise refuse dark images)."""
    import csv

    from semlayout.config import apply_overrides
    from semlayout.data.shards import write_shards
    from semlayout.train.adaptation import adapt
    from semlayout.train.checkpoint import build_networks, load_checkpoint, save_checkpoint

    cfg = apply_overrides(tiny_config(), {"generator.polarity_conditioning": "film"})
    cfg = apply_overrides(cfg, {"polarity.learned": [1]})
    torch.manual_seed(0)
    champ = save_checkpoint(tmp_path / "champion", cfg, build_networks(cfg), 0, 0)
    dark = tmp_path / "aligned"
    shutil.copytree(tiny_aligned, dark)
    with open(dark / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["declared_polarity"] = "-1"
    with open(dark / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    shards = write_shards(dark, tmp_path / "shards", val=0.15, test=0.25, seed=0, shard_size=16)
    assert shards["polarity"].get("-1") and not shards["polarity"].get("+1")
    acfg = AdaptConfig(steps=2, lr=1e-3, batch_size=2, crop_size=None, eval_every=2, eval_pairs=2)
    res = adapt(champ, tmp_path / "shards", tmp_path / "out", acfg)
    out_cfg, _, _ = load_checkpoint(res.path)
    assert out_cfg.polarity.learned == [1, -1]
    assert "val_reviewed_sem2layout_ssim" in res.curve[-1]


def test_paired_gate_judges_layout2sem_after_the_low_pass_when_both_carry_it() -> None:
    """A smoother Layout->SEM: worse in plain SSIM against the noisy reviewed SEMs, better
    after the low-pass (`GateConfig.paired_metric`). Judged on the low-pass it passes, and
    the reasons name the metric; the floors stay on plain SSIM; without the low-pass scores
    (an older evaluation) the plain SSIM decides, and the gate refuses."""
    rng = np.random.default_rng(7)
    new_a, new_b, orig_a, orig_b = _case(np.zeros(12), rng.normal(0, 0.002, 60))
    new_a["per_pair"]["sem2layout"]["ssim"] = list(
        np.array(new_b["per_pair"]["sem2layout"]["ssim"]) + 0.05 + rng.normal(0, 0.01, 12)
    )
    plain = np.array(new_b["per_pair"]["layout2sem"]["ssim"])
    new_a["per_pair"]["layout2sem"]["ssim"] = list(plain - 0.03 + rng.normal(0, 0.003, 12))
    assert not judge_finetune(new_a, new_b, orig_a, orig_b, CFG).passed  # plain SSIM: worse
    for ev, shift in ((new_a, 0.04), (new_b, 0.0), (orig_a, 0.0), (orig_b, 0.0)):
        pp = np.array(ev["per_pair"]["layout2sem"]["ssim"])
        ev["per_pair"]["layout2sem"]["ssim_lowpass"] = list(pp + 0.2 + shift)
    new_a["per_pair"]["layout2sem"]["ssim_lowpass"] = list(plain + 0.2 + 0.04)
    r = judge_finetune(new_a, new_b, orig_a, orig_b, CFG)
    assert r.passed, r.reasons
    j = r.judged["layout2sem"]
    assert j["metric"] == "ssim_lowpass" and j["improved"] and j["new_delta"] > 0.03
    assert r.judged["sem2layout"]["metric"] == "ssim"
    assert any("layout2sem: on the 12 new test pairs ssim_lowpass" in x for x in r.reasons)
    plain_only = CFG.model_copy(update={"paired_metric": {}})
    assert not judge_finetune(new_a, new_b, orig_a, orig_b, plain_only).passed
