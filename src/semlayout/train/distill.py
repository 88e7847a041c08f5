"""Distillation: a trained checkpoint's generators as soft targets for a smaller student.

`train.teacher` names a checkpoint folder (config.json + weights.safetensors, read by
`load_checkpoint`: safetensors, never a pickle) and `loss.lambda_distill` the weight of the
terms `distill_A` = L1(G_A(sem), teacher G_A(sem)) and `distill_B` = L1(G_B(layout), teacher
G_B(layout)), for the same (cropped, augmented) input and polarity, added to the usual losses.
The teacher runs in eval mode (dropout off, batch-norm running statistics: what it serves)
under no_grad, at the step's precision. Both directions distil: a student replaces the
teacher as a whole checkpoint, so its Layout->SEM must follow too.

The teacher must see what the student sees: the same image size and channels, and the same
polarity conditioning and profiles (a teacher without polarity conditioning gives one answer
for both polarities; the student would learn it). Anything else is one `SemlayoutError` line.
"""

from __future__ import annotations

import torch
from torch import nn

from semlayout.config import ExperimentConfig
from semlayout.errors import SemlayoutError

TEACHER_NETS = ("G_A", "G_B")
# what a teacher's generator config must share with the student's
_MUST_MATCH = (
    "image_size",
    "in_channels",
    "out_channels",
    "polarity_conditioning",
    "profiles",
)


def check_compatible(student: ExperimentConfig, teacher: ExperimentConfig, source: str) -> None:
    """SemlayoutError naming the first generator setting the teacher does not share."""
    for key in _MUST_MATCH:
        mine, theirs = getattr(student.generator, key), getattr(teacher.generator, key)
        if mine != theirs:
            raise SemlayoutError(
                f"train.teacher {source}: generator.{key} is {theirs!r} in the teacher but "
                f"{mine!r} in the student; a teacher must see what its student sees"
            )


def load_teacher(
    cfg: ExperimentConfig, device: str | torch.device = "cpu"
) -> dict[str, nn.Module] | None:
    """The teacher's G_A and G_B (eval mode, frozen, on `device`), or None without a teacher."""
    if not cfg.train.teacher:
        return None
    from semlayout.train.checkpoint import load_checkpoint

    source = cfg.train.teacher
    try:
        teacher_cfg, nets, _ = load_checkpoint(source)
    except SemlayoutError as err:
        raise SemlayoutError(f"train.teacher: {err}") from None
    check_compatible(cfg, teacher_cfg, source)
    out: dict[str, nn.Module] = {}
    for name in TEACHER_NETS:
        net = nets[name].to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        out[name] = net
    return out
