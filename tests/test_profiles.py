"""Tool / layer profiles: a per-profile conditioning that a fine-tune learns alone, so the
shared network (and every other profile) answers exactly as the champion did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_train import tiny_config

from semlayout.config import apply_overrides
from semlayout.errors import SemlayoutError
from semlayout.train.recipe import AdaptConfig, adapt_config


def _film_cfg(profiles: list[str] | None = None):  # noqa: ANN202
    cfg = apply_overrides(tiny_config(), {"generator.polarity_conditioning": "film"})
    return apply_overrides(cfg, {"generator.profiles": profiles or []})


def _champion(tmp_path: Path) -> Path:
    from semlayout.train.checkpoint import build_networks, save_checkpoint

    cfg = _film_cfg()
    torch.manual_seed(0)
    return Path(save_checkpoint(tmp_path / "champion", cfg, build_networks(cfg), 0, 0))


def _x(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(n, 1, 32, 32) * 2 - 1, torch.tensor([1.0, -1.0, 1.0][:n])


def test_profile_labels_are_checked_and_unknown_ones_run_the_shared_network() -> None:
    from semlayout.profiles import NONE, check_profile, profile_index, with_profile

    assert check_profile("tool-b.M1_2") == "tool-b.M1_2"
    for bad in ("", "a b", "x" * 65, "../etc"):
        with pytest.raises(SemlayoutError, match="expected 1-64 characters"):
            check_profile(bad)
    assert profile_index(["a", "b"], "b") == 1
    assert profile_index(["a"], "c") == NONE and profile_index(["a"], None) == NONE
    assert with_profile(["a"], "b") == ["a", "b"] and with_profile(["a", "b"], "a") == ["a", "b"]
    with pytest.raises(SemlayoutError, match="profile"):
        adapt_config({"profile": "no spaces"})
    with pytest.raises(SemlayoutError):
        apply_overrides(tiny_config(), {"generator.profiles": ["bad label"]})


def test_a_new_profile_starts_as_the_shared_network_and_a_view_fixes_its_row() -> None:
    from semlayout.models.unet import ProfileView
    from semlayout.train.checkpoint import build_networks

    torch.manual_seed(0)
    net = build_networks(_film_cfg(["a", "b"]))["G_A"].eval()
    x, pol = _x()
    shared = net(x, pol)
    for row in (0, 1):
        assert torch.equal(net(x, pol, torch.full((3,), row)), shared)  # zero rows: identity
    with torch.no_grad():
        net.profile_down[1].gamma[1].fill_(0.5)
    mixed = net(x, pol, torch.tensor([-1, 1, 0]))
    assert torch.equal(mixed[0], shared[0]) and torch.equal(mixed[2], shared[2])
    assert not torch.equal(mixed[1], shared[1])
    assert torch.equal(ProfileView(net, 1)(x, pol), net(x, pol, torch.full((3,), 1)))


def test_adapting_a_profile_leaves_the_shared_network_bit_identical(
    tiny_aligned: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from semlayout.data.shards import write_shards
    from semlayout.inference import Translator
    from semlayout.train.adaptation import adapt
    from semlayout.train.checkpoint import load_checkpoint

    champ = _champion(tmp_path)
    # no held-out reviewed pairs: the last weights are the result (so the rows surely moved)
    reviewed = tmp_path / "reviewed"
    write_shards(tiny_aligned, reviewed, val=0.0, test=0.25, seed=0, shard_size=16)
    acfg = AdaptConfig(steps=4, lr=5e-2, batch_size=2, crop_size=None, eval_every=2,
                       eval_pairs=2, replay_fraction=0.5, forget_budget=None,
                       ema_decay=0.0, profile="tool-b")  # fmt: skip
    res = adapt(champ, reviewed, tmp_path / "out", acfg, replay_shards=tiny_shards)
    assert res.best_step == 4, res.curve
    cfg, _, _ = load_checkpoint(res.path)
    assert cfg.generator.profiles == ["tool-b"]
    before = load_file(champ / "weights.safetensors")
    after = load_file(res.path / "weights.safetensors")
    gen_keys = [k for k in before if k.startswith(("G_A.", "G_B."))]
    assert gen_keys and all(torch.equal(before[k], after[k]) for k in gen_keys)
    grown = [k for k in after if ".profile_" in k]
    assert grown and all(k not in before for k in grown)
    assert any(after[k].abs().sum() > 0 for k in grown)
    # the original direction answers exactly as the champion; the profile answers differently
    rng = np.random.default_rng(0)
    sems = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(2)]
    champ_out = Translator.load(champ).translate("sem2layout", sems, polarity="bright")
    shared = Translator.load(res.path)
    assert shared.info["profile"] is None and shared.info["profiles"] == ["tool-b"]
    same = shared.translate("sem2layout", sems, polarity="bright")
    assert all(np.array_equal(a, b) for a, b in zip(same, champ_out, strict=True))
    tool = Translator.load(res.path, profile="tool-b")
    assert tool.info["profile"] == "tool-b"
    diff = tool.translate("sem2layout", sems, polarity="bright", binarize=False)
    base = shared.translate("sem2layout", sems, polarity="bright", binarize=False)
    assert any(not np.array_equal(a, b) for a, b in zip(diff, base, strict=True))
    unknown = Translator.load(res.path, profile="tool-c")
    assert unknown.info["profile"] is None  # not learned: the shared network, said so
    with pytest.raises(SemlayoutError, match="onnx backend serves the shared network only"):
        Translator.load(res.path, backend="onnx", profile="tool-b")
    # the CLI's --layer selects the layer's profile: the same answer as the profile's view
    import cv2

    from semlayout.cli import main

    src = tmp_path / "in"
    src.mkdir()
    for i, sem in enumerate(sems):
        cv2.imwrite(str(src / f"s{i}.png"), sem)
    outs = {}
    for label in ("tool-b", "tool-c"):
        out = tmp_path / f"pred-{label}"
        args = ["predict", "--model", str(res.path), "--direction", "sem2layout", str(src)]
        assert main([*args, "--out", str(out), "--polarity", "bright", "--layer", label]) == 0
        outs[label] = [cv2.imread(str(out / f"s{i}.png"), cv2.IMREAD_UNCHANGED) for i in (0, 1)]
    assert all(np.array_equal(a, b) for a, b in zip(outs["tool-b"], diff, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(outs["tool-c"], base, strict=True))


def test_a_profile_adapter_starts_as_the_identity_and_acts_on_its_row_only() -> None:
    from semlayout.models.unet import ProfileAdapter
    from semlayout.train.checkpoint import build_networks

    torch.manual_seed(0)
    cfg = apply_overrides(_film_cfg(["a", "b"]), {"generator.profile_adapter_rank": 2})
    net = build_networks(cfg)["G_B"].eval()
    assert len(net.profile_adapt) == len(net.up) and net.profile_adapt
    x, pol = _x()
    shared = net(x, pol)
    assert torch.equal(net(x, pol, torch.tensor([0, 1, -1])), shared)  # U = 0: identity
    with torch.no_grad():
        net.profile_adapt[-1].up[1].fill_(0.3)
    mixed = net(x, pol, torch.tensor([0, 1, -1]))
    assert torch.equal(mixed[0], shared[0]) and torch.equal(mixed[2], shared[2])
    assert not torch.equal(mixed[1], shared[1])
    a = ProfileAdapter(4, 2, 2)
    y = torch.rand(2, 4, 3, 3)
    assert torch.equal(a(y, torch.tensor([-1, -1])), y)


def _adapt(  # noqa: ANN202
    champ: Path, reviewed: Path, out: Path, shards: Path, label: str, rank: int,
    directions: tuple[str, ...] = ("sem2layout", "layout2sem"),
):  # fmt: skip
    from semlayout.train.adaptation import adapt

    acfg = AdaptConfig(steps=4, lr=5e-2, batch_size=2, crop_size=None, eval_every=2,
                       eval_pairs=2, replay_fraction=0.5, forget_budget=None,
                       ema_decay=0.0, profile=label, adapter_rank=rank,
                       directions=list(directions))  # fmt: skip
    res = adapt(champ, reviewed, out, acfg, replay_shards=shards)
    assert res.best_step == 4, res.curve
    return res.path


def test_adapting_a_profile_with_adapters_keeps_the_rest_bit_identical(
    tiny_aligned: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """An old-format profile checkpoint (FiLM rows, no adapter key in config.json) loads
    unchanged; a second profile trained with adapters leaves the shared network and the first
    profile's answers bit-identical, and only its own adapter row moves."""
    import json

    from safetensors.torch import load_file

    from semlayout.data.shards import write_shards
    from semlayout.inference import Translator
    from semlayout.train.checkpoint import load_checkpoint

    reviewed = tmp_path / "reviewed"
    write_shards(tiny_aligned, reviewed, val=0.0, test=0.25, seed=0, shard_size=16)
    first = _adapt(_champion(tmp_path), reviewed, tmp_path / "a", tiny_shards, "tool-a", 0)
    conf = json.loads((first / "config.json").read_text())
    assert conf["config"]["generator"].pop("profile_adapter_rank") == 0
    (first / "config.json").write_text(json.dumps(conf))  # as written before adapters existed
    cfg, _, _ = load_checkpoint(first)
    assert cfg.generator.profile_adapter_rank == 0 and cfg.generator.profiles == ["tool-a"]
    rng = np.random.default_rng(0)
    lays = [(rng.random((32, 32)) > 0.5).astype(np.uint8) * 255 for _ in range(2)]

    def answers(model: Path, label: str | None) -> list[np.ndarray]:
        t = Translator.load(model, profile=label)
        return t.translate("layout2sem", lays, polarity="bright")

    before = {label: answers(first, label) for label in (None, "tool-a")}
    second = _adapt(first, reviewed, tmp_path / "b", tiny_shards, "tool-b", 3)
    cfg2, _, _ = load_checkpoint(second)
    assert cfg2.generator.profiles == ["tool-a", "tool-b"]
    assert cfg2.generator.profile_adapter_rank == 3
    w1, w2 = load_file(first / "weights.safetensors"), load_file(second / "weights.safetensors")
    gens = {k: v for k, v in w1.items() if k.startswith(("G_A.", "G_B."))}  # D trains
    for k, v in gens.items():  # shared weights equal; profile tables: tool-a's row equal
        assert torch.equal(v, w2[k] if v.shape == w2[k].shape else w2[k][: v.shape[0]]), k
    adapt_keys = [k for k in w2 if ".profile_adapt." in k]
    assert adapt_keys and all(k not in w1 for k in adapt_keys)
    ups = [k for k in adapt_keys if k.endswith(".up") and k.startswith("G_B.")]
    assert all(w2[k][0].abs().sum() == 0 for k in ups)  # tool-a's adapter: untouched zeros
    assert any(w2[k][1].abs().sum() > 0 for k in ups)  # tool-b's adapter learned
    for label, out in before.items():
        again = answers(second, label)
        assert all(np.array_equal(a, b) for a, b in zip(again, out, strict=True)), label
    tool_b = answers(second, "tool-b")
    assert any(not np.array_equal(a, b) for a, b in zip(tool_b, before[None], strict=True))


def test_a_profile_adapts_only_the_directions_asked(
    tiny_aligned: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """directions=[sem2layout]: G_A's profile row and adapter learn, G_B's stay zero (its
    Layout->SEM for the profile is the shared network's)."""
    from safetensors.torch import load_file

    from semlayout.data.shards import write_shards

    reviewed = tmp_path / "reviewed"
    write_shards(tiny_aligned, reviewed, val=0.0, test=0.25, seed=0, shard_size=16)
    out = _adapt(_champion(tmp_path), reviewed, tmp_path / "a", tiny_shards, "tool-a", 2,
                 ("sem2layout",))  # fmt: skip
    w = load_file(out / "weights.safetensors")
    rows = {k: v for k, v in w.items() if ".profile_" in k and not k.endswith(".down")}
    assert all(v.abs().sum() == 0 for k, v in rows.items() if k.startswith("G_B."))
    assert any(v.abs().sum() > 0 for k, v in rows.items() if k.startswith("G_A."))
