"""Loss values against hand-computed references, the image buffer and the LR schedule."""

from __future__ import annotations

import math

import pytest
import torch

from semlayout.train.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    l1_loss,
    soft_dice_loss,
)
from semlayout.train.pool import ImagePool
from semlayout.train.schedule import lr_factor, set_lr


@pytest.fixture(autouse=True)
def _one_thread():
    # the machine is shared: two intra-op threads spin against other jobs and run 10x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_lsgan_losses_match_hand_computed_values():
    real = torch.tensor([0.9, 0.5])
    fake = torch.tensor([0.2, -0.2])
    # real target 0.9 (smoothing): ((0)^2 + (0.4)^2)/2 = 0.08; fake target 0: 0.04
    assert float(discriminator_loss(real, fake, "lsgan", 0.9)) == pytest.approx(0.5 * (0.08 + 0.04))
    assert float(generator_adversarial_loss(fake, "lsgan")) == pytest.approx((0.8**2 + 1.2**2) / 2)


def test_bce_losses_match_hand_computed_values():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    ref_real = -(0.9 * math.log(sig(2.0)) + 0.1 * math.log(1 - sig(2.0)))
    ref_fake = -math.log(1 - sig(-1.0))
    assert float(discriminator_loss(real, fake, "bce", 0.9)) == pytest.approx(
        0.5 * (ref_real + ref_fake)
    )
    assert float(generator_adversarial_loss(fake, "bce")) == pytest.approx(-math.log(sig(-1.0)))


def test_l1():
    assert float(l1_loss(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.0]))) == 1.0


def test_soft_dice_counts_each_image_as_a_whole():
    target = -torch.ones(2, 1, 16, 16)
    target[0, 0, 4:12, 4:12] = 1  # a big square
    target[1, 0, 7:9, 7:9] = 1  # a 2 px via
    assert soft_dice_loss(target, target).item() == pytest.approx(0.0, abs=0.02)
    assert soft_dice_loss(-target, target).item() > 0.95  # everything inverted
    # missing the via alone costs about half the loss; L1 barely notices it (4 of 512 pixels)
    miss = target.clone()
    miss[1] = -1
    assert soft_dice_loss(miss, target).item() > 0.4
    assert l1_loss(miss, target).item() < 0.02
    grad_in = target.clone().requires_grad_(True)
    soft_dice_loss(grad_in * 0.5, target).backward()
    assert grad_in.grad is not None and torch.isfinite(grad_in.grad).all()


def test_feature_matching_targets_carry_no_gradient():
    real = [torch.randn(2, 3, 4, 4, requires_grad=True) for _ in range(2)]
    fake = [torch.randn(2, 3, 4, 4, requires_grad=True) for _ in range(2)]
    loss = feature_matching_loss(fake, real)
    expected = sum((f - r).abs().mean() for f, r in zip(fake, real, strict=True)) / 2
    assert float(loss) == pytest.approx(float(expected))
    loss.backward()
    assert all(r.grad is None for r in real)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fake)


def test_pool_of_size_zero_passes_through():
    x = torch.randn(3, 2, 4, 4)
    assert ImagePool(0).query(x) is x


def test_pool_fills_then_swaps_about_half_with_stored_images():
    pool = ImagePool(4, seed=1)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returns the new images
    stored_before = {float(t) for t in pool.images}
    swapped = 0
    for step in range(200):
        new = torch.full((1, 1, 1, 1), 100.0 + step)
        pool_values = {float(t) for t in pool.images}
        out = float(pool.query(new))
        if out != 100.0 + step:
            assert out in pool_values  # an old image came back
            assert 100.0 + step in {float(t) for t in pool.images}  # new one took its place
            swapped += 1
    assert 70 < swapped < 130
    assert stored_before  # sanity
    assert len(pool.images) == 4


def test_pool_state_round_trip_replays_the_same_choices():
    a = ImagePool(3, seed=5)
    for i in range(5):
        a.query(torch.full((2, 1, 2, 2), float(i)))
    b = ImagePool(3, seed=99)
    b.load_state_dict(a.state_dict())
    for i in range(10):
        x = torch.full((2, 1, 2, 2), 10.0 + i)
        assert torch.equal(a.query(x), b.query(x))


def test_linear_decay_schedule_values():
    assert lr_factor(0, 10, 5) == 1.0
    assert lr_factor(5, 10, 5) == 1.0
    assert lr_factor(7.5, 10, 5) == pytest.approx(0.5)
    assert lr_factor(10, 10, 5) == 0.0
    assert lr_factor(12, 10, 5) == 0.0
    assert lr_factor(3, 10, 10) == 1.0
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
    assert set_lr(opt, 2e-4, lr_factor(8, 10, 5)) == pytest.approx(0.8e-4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.8e-4)
