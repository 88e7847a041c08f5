"""The training step and loop: frozen D in the G step, exact resume, overfit, divergence, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers_train import PairsInMemory, tiny_config
from safetensors.torch import load_file

from semlayout.config import apply_overrides
from semlayout.errors import SemlayoutError
from semlayout.train.checkpoint import load_checkpoint
from semlayout.train.loop import run_training
from semlayout.train.trainer import NonFiniteLoss, Trainer


@pytest.fixture(autouse=True)
def _one_thread():
    # the machine is shared: two intra-op threads spin against other jobs and run 10x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(n=2, seed=0):
    ds = PairsInMemory(n, seed=seed)
    items = [ds[i] for i in range(n)]
    return torch.stack([it["sem"] for it in items]), torch.stack([it["layout"] for it in items])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_d_gets_no_gradient_in_the_g_step(precision):
    torch.manual_seed(0)
    trainer = Trainer(tiny_config(precision=precision))
    grads_seen = {}
    d_params = {
        f"{n}.{k}": p for n in ("D_A", "D_B") for k, p in trainer.nets[n].named_parameters()
    }
    for name, p in d_params.items():
        p.register_hook(
            lambda g, name=name: grads_seen.__setitem__(name, grads_seen.get(name, 0) + 1)
        )
    g_params = [p for n in ("G_A", "G_B") for p in trainer.nets[n].parameters()]
    g_before = [p.detach().clone() for p in g_params]
    sem, lay = _batch()
    losses = trainer.train_step(sem, lay)
    # one gradient per D parameter: from the D update only, none from the G update
    assert set(grads_seen) == set(d_params)
    assert all(v == 1 for v in grads_seen.values())
    assert all(p.requires_grad for p in d_params.values())  # unfrozen again after the step
    assert not {id(p) for p in d_params.values()} & {
        id(p) for g in trainer.opt_G.param_groups for p in g["params"]
    }
    assert any(not torch.equal(a, b) for a, b in zip(g_before, g_params, strict=True))
    assert set(losses) >= {"loss_G", "loss_D", "gan_A", "l1_B", "cycle_A", "fm_B", "idt_A"}
    terms = (
        "gan_A",
        "gan_B",
        "l1_A",
        "l1_B",
        "cycle_A",
        "cycle_B",
        "fm_A",
        "fm_B",
        "idt_A",
        "idt_B",
        "dice_A",
    )
    assert losses["loss_G"] == pytest.approx(sum(losses[k] for k in terms), rel=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_batch_overfit(precision):
    torch.manual_seed(0)
    cfg = tiny_config(buffer_size=0, precision=precision)
    cfg = apply_overrides(
        cfg,
        {
            "generator.dropout": 0.0,
            "generator.base_filters": 8,
            "generator.max_filters": 16,
            "train.lr": 1e-3,
        },
    )
    trainer = Trainer(cfg)
    sem, lay = _batch(4, seed=3)
    first = trainer.train_step(sem, lay)["l1_A"]
    for _ in range(120):
        last = trainer.train_step(sem, lay)["l1_A"]
    assert last < 0.15 * first
    trainer.G_A.eval()
    with torch.no_grad():
        pred = trainer.G_A(sem) > 0
    truth = lay > 0
    iou = float((pred & truth).sum() / (pred | truth).sum())
    assert iou > 0.95


def _step_with(precision, seed=0):
    cfg = tiny_config(precision=precision)  # cycle, feature matching and identity terms all on
    torch.manual_seed(seed)
    trainer = Trainer(cfg)
    sem, lay = _batch(2, seed=5)
    torch.manual_seed(seed + 1)  # the same dropout draws in both precisions
    return trainer, trainer.train_step(sem, lay)


def test_bf16_step_runs_with_finite_losses_and_fp32_state():
    trainer, losses = _step_with("bf16")
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert (
        losses["cycle_A"] > 0
        and losses["fm_B"] > 0
        and losses["idt_A"] > 0
        and losses["dice_A"] > 0
    )
    # weights, gradients, optimiser moments and the pools' stored fakes stay fp32
    for name, net in trainer.nets.items():
        for pname, p in net.named_parameters():
            assert p.dtype == torch.float32, (name, pname)
            assert p.grad is None or p.grad.dtype == torch.float32, (name, pname)
    for opt in (trainer.opt_G, trainer.opt_D):
        states = list(opt.state.values())
        assert states and all(
            v.dtype == torch.float32
            for st in states
            for v in st.values()
            if torch.is_tensor(v) and v.numel() > 1
        )
    assert trainer.pool_A.images and all(im.dtype == torch.float32 for im in trainer.pool_A.images)


def test_bf16_and_fp32_losses_agree_on_one_batch():
    _, fp32 = _step_with("fp32")
    _, bf16 = _step_with("bf16")
    assert fp32.keys() == bf16.keys()
    for k in fp32:
        # bf16 keeps 8 mantissa bits; measured differences are <= 0.3%: a loose tolerance, far
        # below the size of any real difference between two step implementations
        assert bf16[k] == pytest.approx(fp32[k], rel=0.02, abs=0.01), (k, fp32[k], bf16[k])
    assert fp32 != bf16  # the bf16 path really ran at a different precision


def test_precision_is_validated_and_saved_with_the_checkpoint(tmp_path):
    with pytest.raises(SemlayoutError, match=r"train\.precision"):
        tiny_config(precision="fp16")
    cfg = tiny_config(precision="bf16", max_steps=2, checkpoint_every=2)
    final, seen = _run(tmp_path, "run", cfg, PairsInMemory(4))
    assert len(seen) == 2
    assert json.loads((final / "config.json").read_text())["config"]["train"]["precision"] == "bf16"
    assert load_checkpoint(final)[0].train.precision == "bf16"
    assert tiny_config().train.precision == "fp32"


def _run(tmp_path, name, cfg, ds, resume=False):
    seen = []
    final = run_training(
        cfg,
        ds,
        tmp_path / name,
        val_ds=PairsInMemory(4, seed=9),
        resume=resume,
        progress=False,
        on_step=lambda s, losses: seen.append((s, losses)),
    )
    return final, seen


def test_resume_is_exact(tmp_path):
    # 12 items, batch 2 -> 6 steps an epoch; stop at step 4 (mid-epoch), resume to 10
    cfg = tiny_config(checkpoint_every=4, balanced_sampling=True, augment=True)
    ds = PairsInMemory(12, augment=True)
    straight, losses_straight = _run(
        tmp_path, "straight", apply_overrides(cfg, {"train.max_steps": 10}), ds
    )
    _, losses_a = _run(tmp_path, "resumed", apply_overrides(cfg, {"train.max_steps": 4}), ds)
    assert (tmp_path / "resumed" / "last").resolve().name == "step-000004"
    resumed, losses_b = _run(
        tmp_path, "resumed", apply_overrides(cfg, {"train.max_steps": 10}), ds, resume=True
    )
    assert [s for s, _ in losses_a + losses_b] == list(range(1, 11))
    for (s, a), (_, b) in zip(losses_straight, losses_a + losses_b, strict=True):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), (s, k)
    w1 = load_file(str(straight / "weights.safetensors"))
    w2 = load_file(str(resumed / "weights.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-6, rtol=0), k
    h1 = json.loads((tmp_path / "straight" / "history.json").read_text())["epochs"]
    h2 = json.loads((tmp_path / "resumed" / "history.json").read_text())["epochs"]
    assert [r["epoch"] for r in h1] == [1] and [r["epoch"] for r in h2] == [1]
    assert h1[0]["loss_G"] == pytest.approx(h2[0]["loss_G"], rel=1e-6)
    assert "val_sem2layout_iou" in h1[0]


def test_run_layout_and_checkpoint_contents(tmp_path):
    cfg = tiny_config(checkpoint_every=3, keep_checkpoints=2, max_steps=9)
    final, _ = _run(tmp_path, "run", cfg, PairsInMemory(8))
    run = tmp_path / "run"
    assert final == run / "final"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000006", "step-000009"]
    assert (run / "last").is_symlink() and (run / "last").resolve().name == "step-000009"
    assert (run / "samples").is_dir()
    cfg2, nets, meta = load_checkpoint(final)
    assert cfg2.polarity.learned == [1]  # what the data held, recorded by training
    cfg2.polarity.learned = None
    assert cfg2 == cfg and meta["step"] == 9 and meta["has_train_state"]
    state = torch.load(final / "train_state.pt", weights_only=True)
    assert state["step"] == 9 and len(state["ranks"]) == 1
    with pytest.raises(SemlayoutError, match="already holds a training run"):
        _run(tmp_path, "run", cfg, PairsInMemory(8))


def test_init_from_starts_from_the_checkpoint_weights(tmp_path):
    cfg = tiny_config(max_steps=2)
    first, _ = _run(tmp_path, "a", cfg, PairsInMemory(4))
    ft = apply_overrides(cfg, {"train.lr": 1e-12, "train.max_steps": 1})
    final = run_training(ft, PairsInMemory(4), tmp_path / "b", init_from=first, progress=False)
    a, b = (
        load_file(str(first / "weights.safetensors")),
        load_file(str(final / "weights.safetensors")),
    )
    key = "G_A.down.0.0.weight"
    assert torch.allclose(a[key], b[key], atol=1e-6)


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config(checkpoint_every=2, batch_size=1, max_steps=8)
    ds = PairsInMemory(6, nan_at=-1)
    # sequential order is random; poison whichever item comes at step 5
    from semlayout.train.sampling import epoch_order

    ds.nan_at = epoch_order(6, 0, cfg.train.seed)[4]
    with pytest.raises(NonFiniteLoss, match=r"diverged at step 4: .*=nan"):
        run_training(cfg, ds, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "last").resolve().name == "step-000004"
    assert not (tmp_path / "run" / "final").exists()
    load_checkpoint(tmp_path / "run" / "last")


def test_dataset_smaller_than_a_batch_is_a_user_error(tmp_path):
    with pytest.raises(SemlayoutError, match="fewer than one batch"):
        run_training(tiny_config(batch_size=8), PairsInMemory(3), tmp_path / "r", progress=False)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    from helpers_shards import make_pairs

    from semlayout.data.shards import write_shards

    root = tmp_path_factory.mktemp("shards")
    make_pairs(root / "aligned", {"line_space": 10, "via_array": 6})
    write_shards([root / "aligned"], root / "shards", val=0.2, test=0.2, seed=0)
    return root / "shards"


@pytest.mark.parametrize("name", ["baseline", "improved", "small", "tiny"])
def test_shipped_configs_load_and_build(name):
    from pathlib import Path

    from semlayout.config import load_config
    from semlayout.train.checkpoint import build_networks

    cfg = load_config(Path(__file__).parent.parent / "configs" / f"{name}.yaml")
    assert cfg.name == name
    nets = build_networks(cfg)
    assert set(nets) == {"G_A", "G_B", "D_A", "D_B"}


def test_shipped_baseline_and_improved_differ_as_specified():
    from pathlib import Path

    from semlayout.config import load_config

    root = Path(__file__).parent.parent / "configs"
    base, imp = load_config(root / "baseline.yaml"), load_config(root / "improved.yaml")
    assert (base.loss.gan_mode, imp.loss.gan_mode) == ("bce", "lsgan")
    assert not base.discriminator.spectral_norm and imp.discriminator.spectral_norm
    assert not base.generator.attention and imp.generator.attention
    assert base.loss.lambda_fm == 0 and imp.loss.lambda_fm > 0
    assert base.train.buffer_size == 0 and imp.train.buffer_size == 50
    assert base.loss.real_label == 1.0 and imp.loss.real_label == 0.9


def test_cli_trains_resumes_and_reports_errors(tiny_shards, tmp_path):
    from pathlib import Path

    from semlayout.cli import main

    tiny = str(Path(__file__).parent.parent / "configs" / "tiny.yaml")
    run = tmp_path / "run"
    args = [
        "train",
        "--config",
        tiny,
        "--data",
        str(tiny_shards),
        "--out",
        str(run),
        "--no-progress",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.num_threads=1",
    ]
    assert main(args) == 0
    assert load_checkpoint(run / "final")[2]["step"] == 2
    assert (
        main([*args[:-4], "--resume", "--set", "train.max_steps=4", "--set", "train.num_threads=1"])
        == 0
    )
    assert load_checkpoint(run / "final")[2]["step"] == 4
    assert json.loads((run / "history.json").read_text())["epochs"] == []  # 4 steps < one epoch


def test_cli_errors_are_one_line(tiny_shards, tmp_path, capsys):
    from pathlib import Path

    from semlayout.cli import main

    tiny = str(Path(__file__).parent.parent / "configs" / "tiny.yaml")
    base = [
        "train",
        "--config",
        tiny,
        "--data",
        str(tiny_shards),
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    assert main([*base, "--set", "train.epoks=2"]) == 2
    assert "unknown config key 'train.epoks'" in capsys.readouterr().err
    assert main([*base, "--set", "nonsense"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main([*base, "--resume"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--config",
                tiny,
                "--data",
                str(tmp_path / "missing"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "shard folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_logs_params_epoch_metrics_and_sample_grids(tmp_path):
    import mlflow

    from semlayout.train.loop import run_training as rt

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny_config(max_steps=8)  # 8 items, batch 2 -> 4 steps an epoch -> 2 epochs
    rt(
        cfg,
        PairsInMemory(8),
        tmp_path / "run",
        val_ds=PairsInMemory(4, seed=9),
        mlflow_uri=uri,
        experiment="h4-test",
        progress=False,
    )
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("h4-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.gan_mode"] == "lsgan" and run.data.params["train.max_steps"] == "8"
    hist = client.get_metric_history(run.info.run_id, "loss_G")
    assert [m.step for m in hist] == [1, 2]
    assert "val_sem2layout_iou" in run.data.metrics
    arts = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert arts == ["samples/epoch-0001.png", "samples/epoch-0002.png"]
    assert run.data.tags["semlayout.checkpoint"].endswith("final")
    mlflow.set_tracking_uri(None)


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_units():
    from semlayout.train.trainer import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    native = bool(flags & {"amx_bf16", "avx512_bf16"})  # what the kernel reports, not torch's probe
    trainer = Trainer(tiny_config(precision="auto"))
    assert trainer.precision == ("bf16" if native else "fp32")
    sem, lay = _batch()
    assert all(torch.isfinite(torch.tensor(v)) for v in trainer.train_step(sem, lay).values())


@pytest.mark.parametrize(("side", "other"), [("B", "A"), ("A", "B")])
def test_adversarial_weight_scales_what_its_d_teaches_its_g_only(side, other):
    def step(weight):
        cfg = apply_overrides(
            tiny_config(buffer_size=0), {f"loss.adversarial_weight_{side}": weight}
        )
        torch.manual_seed(0)
        trainer = Trainer(cfg)
        sem, lay = _batch(2, seed=5)
        torch.manual_seed(1)
        return trainer.train_step(sem, lay)

    full, half, off = step(1.0), step(0.5), step(0.0)
    for k in (f"gan_{side}", f"fm_{side}"):
        assert full[k] > 0 and half[k] == pytest.approx(0.5 * full[k], rel=1e-5) and off[k] == 0
    for k in (
        f"gan_{other}",
        f"fm_{other}",
        "l1_A",
        "l1_B",
        "d_A",
        "d_B",
    ):  # the same first step otherwise
        assert half[k] == pytest.approx(full[k], rel=1e-5), k


def test_a_resume_keeps_the_precision_the_run_started_with():
    started = Trainer(tiny_config(precision="bf16"))
    state = started.state_dict()
    assert state["precision"] == "bf16"
    elsewhere = Trainer(
        tiny_config(precision="auto")
    )  # `auto` may resolve otherwise on another host
    elsewhere.precision = "fp32"
    elsewhere.load_state_dict(state)
    assert elsewhere.precision == "bf16"


def test_resume_of_a_shard_dataset_replays_its_reads(tiny_shards, tmp_path):
    # balanced sampling repeats indices within an epoch and ShardDataset's augmentation draw
    # depends on how often an index was read this epoch: a mid-epoch resume must count the reads
    # the epoch already made (ShardDataset.count_reads) to draw the same transforms
    from semlayout.data.dataset import ShardDataset
    from semlayout.train.sampling import epoch_order, family_weights

    cfg = tiny_config(checkpoint_every=2, balanced_sampling=True, augment=True, crop_size=16)
    ds = ShardDataset(tiny_shards, "train", image_size=32, augment=True, seed=0, crop=16)
    order = epoch_order(len(ds), 0, cfg.train.seed, family_weights(ds))
    # the resume at step 2 is mid-epoch and an item read before it is read again after it
    assert len(ds) // 2 > 2 and set(order[:4]) & set(order[4:])
    steps = len(ds) // 2 + 2
    straight, losses_straight = _run(
        tmp_path, "straight", apply_overrides(cfg, {"train.max_steps": steps}), ds
    )
    _, losses_a = _run(tmp_path, "resumed", apply_overrides(cfg, {"train.max_steps": 2}), ds)
    ds2 = ShardDataset(tiny_shards, "train", image_size=32, augment=True, seed=0, crop=16)
    resumed, losses_b = _run(
        tmp_path, "resumed", apply_overrides(cfg, {"train.max_steps": steps}), ds2, resume=True
    )
    assert [s for s, _ in losses_a + losses_b] == list(range(1, steps + 1))
    assert [b for _, b in losses_a + losses_b] == [b for _, b in losses_straight]
    w1 = load_file(str(straight / "weights.safetensors"))
    w2 = load_file(str(resumed / "weights.safetensors"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_epoch_stats_keep_the_saved_epoch_sums_format():
    from semlayout.train.run_state import EpochStats
    from semlayout.train.trainer import LOGGED

    stats = EpochStats()
    assert stats.state_dict() == {}
    for i in range(3):
        stats.add({k: float(i + j) for j, k in enumerate(LOGGED)})
    saved = stats.state_dict()
    assert list(saved) == [*LOGGED, "_n"] and saved["_n"] == 3.0
    assert saved["loss_D"] == 0.0 + 1.0 + 2.0
    again = EpochStats.from_state_dict(saved)  # what an older train_state.pt holds, too
    assert again.n == 3 and again.means() == stats.means() and again.means()["loss_D"] == 1.0


def test_atomic_symlink_points_last_relatively_and_replaces_a_copy(tmp_path):
    from semlayout.atomic import atomic_symlink

    run = tmp_path / "run"
    for name in ("step-000002", "step-000004"):
        (run / "checkpoints" / name).mkdir(parents=True)
    atomic_symlink(run / "last", run / "checkpoints" / "step-000002")
    assert os.readlink(run / "last") == os.path.join("checkpoints", "step-000002")
    atomic_symlink(run / "last", run / "checkpoints" / "step-000004")
    assert (run / "last").resolve().name == "step-000004"
    (tmp_path / "latest").mkdir()  # an older copy-style pointer
    (tmp_path / "latest" / "x").write_text("old")
    assert atomic_symlink(tmp_path / "latest", run) == tmp_path / "latest"
    assert os.readlink(tmp_path / "latest") == "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "run"]  # no temp link left


def test_per_step_curves_leave_training_bit_identical(tmp_path):
    """steps.jsonl (and MLflow's per-step curves) read losses already computed: logging every
    step or never gives the same weights and the same epoch records."""
    import mlflow

    runs = {}
    # the run without MLflow first: MLflow leaves its URI in the environment once set
    for log_every, uri in ((10_000, None), (1, f"sqlite:///{tmp_path / 'mlflow.db'}")):
        out = tmp_path / f"run-{log_every}"
        cfg = tiny_config(max_steps=8, log_every=log_every)
        run_training(cfg, PairsInMemory(8), out, val_ds=PairsInMemory(4, seed=9),
                     mlflow_uri=uri, experiment="curves", progress=False)  # fmt: skip
        runs[log_every] = out
    a = load_file(runs[1] / "final" / "weights.safetensors")
    b = load_file(runs[10_000] / "final" / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h["epochs"]]  # noqa: E731
    ha, hb = (json.loads((runs[k] / "history.json").read_text()) for k in (1, 10_000))
    assert strip(ha) == strip(hb)
    steps = [json.loads(line) for line in (runs[1] / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 9))
    assert {"loss_G", "loss_D", "lr", "time"} <= set(steps[0])
    # only the last step when log_every is larger than the run
    assert [
        json.loads(x)["step"] for x in (runs[10_000] / "steps.jsonl").read_text().splitlines()
    ] == [8]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("curves").experiment_id])
    hist = client.get_metric_history(run.info.run_id, "train/loss_G")
    assert [m.step for m in hist] == list(range(1, 9))
    assert [m.value for m in hist] == pytest.approx([s["loss_G"] for s in steps])
    mlflow.set_tracking_uri(None)
