"""Distillation (loss.lambda_distill + train.teacher): real tiny trainings at 64 px against a
tiny teacher checkpoint, and the CLI's one-line errors for a bad teacher (seconds on a CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_train import PairsInMemory, one_thread, tiny_config
from safetensors.torch import load_file

from semlayout.config import ExperimentConfig, apply_overrides, load_config
from semlayout.errors import SemlayoutError
from semlayout.train.checkpoint import build_networks, load_checkpoint, save_checkpoint
from semlayout.train.loop import run_training

TINY = str(Path(__file__).parent.parent / "configs" / "tiny.yaml")
SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _cfg(**over: object) -> ExperimentConfig:
    """tiny_config at 64 px, no dropout (the comparison below is between two runs, not noise)."""
    base = {
        "generator.image_size": SIZE,
        "generator.n_down": 4,
        "generator.dropout": 0.0,
        "loss.lambda_identity": 0.0,
        "loss.lambda_dice": 0.0,
        "train.val_samples": 0,
        "train.sample_images": 0,
        "train.log_every": 1,
        "train.checkpoint_every": 100,
        "train.epochs": 3,
        "train.decay_start_epoch": 3,
        "train.lr": 1e-3,
        "loss.lambda_l1": 10.0,  # the teacher's pull (lambda_distill 100) dominates where it is on
    }
    return apply_overrides(tiny_config(), {**base, **over})


def _teacher(dest: Path, cfg: ExperimentConfig) -> Path:
    """A tiny teacher checkpoint: random generators (their output is far from the targets, so
    a student that follows it is told apart from one that follows the data)."""
    torch.manual_seed(123)
    return save_checkpoint(dest, cfg, build_networks(cfg), step=0, epoch=0)


def _gap_to_teacher(student: Path, teacher: Path, ds: PairsInMemory) -> dict[str, float]:
    """Mean |student - teacher| of G_A on the SEMs and of G_B on the layouts (eval mode)."""
    _, s_nets, _ = load_checkpoint(student)
    _, t_nets, _ = load_checkpoint(teacher)
    items = [ds[i] for i in range(len(ds))]
    sem = torch.stack([it["sem"] for it in items])
    lay = torch.stack([it["layout"] for it in items])
    with torch.no_grad():
        return {
            "A": float((s_nets["G_A"](sem) - t_nets["G_A"](sem)).abs().mean()),
            "B": float((s_nets["G_B"](lay) - t_nets["G_B"](lay)).abs().mean()),
        }


def _steps(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


def test_distillation_pulls_the_student_toward_the_teacher(tmp_path):
    teacher = _teacher(tmp_path / "teacher", _cfg())
    before = load_file(str(teacher / "weights.safetensors"))
    student = {"generator.base_filters": 2, "generator.max_filters": 4}  # half the filters
    ds, held_out = PairsInMemory(8, size=SIZE, seed=0), PairsInMemory(4, size=SIZE, seed=5)
    runs = {}
    for name, over in {
        "plain": student,
        "distilled": {**student, "loss.lambda_distill": 100.0, "train.teacher": str(teacher)},
    }.items():
        runs[name] = run_training(_cfg(**over), ds, tmp_path / name, progress=False)

    plain, distilled = _steps(tmp_path / "plain"), _steps(tmp_path / "distilled")
    assert all(r["distill_A"] == 0.0 and r["distill_B"] == 0.0 for r in plain)  # off = 0
    # logged every step, positive, and falling over the run in both directions
    for key in ("distill_A", "distill_B"):
        values = [r[key] for r in distilled]
        assert len(values) == 12 and min(values) > 0
        assert sum(values[-3:]) < 0.7 * sum(values[:3]), (key, values)
    # the distilled student ends nearer the teacher than the same student trained without it
    gap_plain = _gap_to_teacher(runs["plain"], teacher, held_out)
    gap_distilled = _gap_to_teacher(runs["distilled"], teacher, held_out)
    for side in ("A", "B"):
        assert gap_distilled[side] < 0.8 * gap_plain[side], (gap_plain, gap_distilled)
    # the teacher is read, never trained: its checkpoint is unchanged
    after = load_file(str(teacher / "weights.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the student's checkpoint names its teacher
    assert load_checkpoint(runs["distilled"])[0].train.teacher == str(teacher)


def test_a_teacher_that_sees_other_inputs_is_refused(tmp_path):
    teacher = _teacher(tmp_path / "t", _cfg(**{"generator.image_size": 32, "generator.n_down": 3}))
    cfg = _cfg(**{"loss.lambda_distill": 1.0, "train.teacher": str(teacher)})
    with pytest.raises(SemlayoutError, match="generator.image_size is 32 in the teacher but 64"):
        run_training(cfg, PairsInMemory(4, size=SIZE), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "final").exists()


def test_lambda_and_teacher_go_together():
    with pytest.raises(SemlayoutError, match="lambda_distill > 0 and train.teacher go together"):
        apply_overrides(load_config("tiny"), {"loss.lambda_distill": 1.0})
    with pytest.raises(SemlayoutError, match="go together"):
        apply_overrides(load_config("tiny"), {"train.teacher": "/somewhere"})
    # the default: no distillation
    cfg = load_config("small")
    assert cfg.loss.lambda_distill == 0.0 and cfg.train.teacher is None


def test_cli_distils_and_a_bad_teacher_is_one_line(tiny_shards, tmp_path, capsys):
    from semlayout.cli import main

    teacher = _teacher(tmp_path / "teacher", load_config(TINY))

    def train(out: str, teacher_path: str) -> int:
        return main(
            [
                "train",
                "--config",
                TINY,
                "--data",
                str(tiny_shards),
                "--out",
                str(tmp_path / out),
                "--no-progress",
                "--set",
                "train.max_steps=2",
                "--set",
                "train.log_every=1",
                "--set",
                "train.num_threads=1",
                "--set",
                "loss.lambda_distill=10",
                "--set",
                f"train.teacher={teacher_path}",
            ]
        )

    assert train("ok", str(teacher)) == 0
    assert all(r["distill_A"] > 0 and r["distill_B"] > 0 for r in _steps(tmp_path / "ok"))
    capsys.readouterr()
    for bad, message in [
        (tmp_path / "missing", "train.teacher: checkpoint folder not found"),
        (tmp_path, "is not a checkpoint folder: missing config.json, weights.safetensors"),
    ]:
        assert train("bad", str(bad)) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "bad" / "final").exists()
