"""ShardDataset items, paired dihedral augmentation, [-1,1] <-> uint8, balanced sampler."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers_shards import make_pairs
from torch.utils.data import DataLoader

from semlayout.data.dataset import (
    ShardDataset,
    balanced_sampler,
    dihedral,
    from_uint8,
    to_uint8,
)
from semlayout.data.shards import load_split_arrays, npz_members, read_index, write_shards
from semlayout.errors import SemlayoutError


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    src = make_pairs(root / "aligned", {"line_space": 30, "via_array": 12, "rare": 4}, seed=2)
    write_shards(src, root / "shards", val=0.1, test=0.2, seed=0, shard_size=8)
    return root / "shards"


def test_uint8_mapping_round_trips_every_value():
    a = np.arange(256, dtype=np.uint8)
    f = from_uint8(a)
    assert f.dtype == np.float32 and f[0] == -1.0 and f[255] == 1.0
    np.testing.assert_allclose(f, a / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(to_uint8(f), a)
    np.testing.assert_array_equal(to_uint8(torch.from_numpy(f)), a)
    t = from_uint8(a, as_tensor=True)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert torch.equal(from_uint8(torch.from_numpy(a)), t)
    np.testing.assert_array_equal(to_uint8(np.array([-3.0, 2.0, 0.0])), [0, 255, 128])
    with pytest.raises(SemlayoutError, match="uint8"):
        from_uint8(np.zeros(3, np.int32))


def test_dihedral_gives_the_eight_distinct_symmetries():
    img = np.arange(16, dtype=np.uint8).reshape(4, 4)
    outs = {dihedral(img, k).tobytes() for k in range(8)}
    assert len(outs) == 8
    np.testing.assert_array_equal(dihedral(img, 0), img)
    np.testing.assert_array_equal(dihedral(img, 1), np.rot90(img))
    np.testing.assert_array_equal(dihedral(img, 4), img[:, ::-1])


@pytest.mark.parametrize("size", [256, 128, 250])
def test_items_shape_dtype_range(shards, size):
    ds = ShardDataset(shards, "train", image_size=size)
    assert len(ds) == read_index(shards)["splits"]["train"]["n"]
    assert ds.families == ["line_space", "rare", "via_array"]
    item = ds[0]
    assert set(item) == {"sem", "layout", "clean", "family", "id", "polarity"}
    assert item["polarity"].shape == () and float(item["polarity"]) in (1.0, -1.0)
    for key in ("sem", "layout", "clean"):
        t = item[key]
        assert t.shape == (1, size, size) and t.dtype == torch.float32
        assert float(t.min()) >= -1.0 and float(t.max()) <= 1.0
    assert isinstance(item["family"], str) and isinstance(item["id"], str)


def test_items_equal_stored_arrays(shards):
    arrays = load_split_arrays(shards, "test")
    ds = ShardDataset(shards, "test", image_size=250)
    for i in range(len(ds)):
        item = ds[i]
        j = list(arrays["ids"]).index(item["id"])
        assert item["family"] == arrays["families"][j]
        for key in ("sem", "layout", "clean"):
            np.testing.assert_array_equal(to_uint8(item[key][0]), arrays[key][j])
        assert set(torch.unique(item["layout"]).tolist()) <= {-1.0, 1.0}  # no resize: still binary
    # resized with INTER_AREA (independent reference: cv2 on the stored array)
    ds256 = ShardDataset(shards, "test", image_size=256)
    item = ds256[0]
    j = list(arrays["ids"]).index(item["id"])
    ref = cv2.resize(arrays["sem"][j], (256, 256), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(to_uint8(item["sem"][0]), ref)


def test_augmentation_identical_for_every_image_of_an_item(shards):
    # helpers' SEMs satisfy layout == (sem > 127) * 255 exactly
    ds = ShardDataset(shards, "train", image_size=250, augment=True, seed=3)
    seen = set()
    for rep in range(3):
        ds.set_epoch(rep)
        for i in range(len(ds)):
            raw = ds.raw(i)
            assert np.array_equal(raw["layout"] > 0, raw["sem"] > 127)
            k = ds.transform_index(i)
            item = ds[i]
            seen.add(k)
            sem, lay, clean = (to_uint8(item[key][0]) for key in ("sem", "layout", "clean"))
            np.testing.assert_array_equal(lay > 0, sem > 127)
            np.testing.assert_array_equal(lay > 0, clean > 127)
            np.testing.assert_array_equal(sem, dihedral(raw["sem"], k))
            np.testing.assert_array_equal(lay, dihedral(raw["layout"], k))
    assert seen == set(range(8))


def test_augmentation_after_resize_stays_paired(shards):
    ds = ShardDataset(shards, "train", image_size=256, augment=True, seed=0)
    for i in range(len(ds)):
        item = ds[i]
        agree = ((item["sem"] > 0) == (item["layout"] > 0)).float().mean()
        assert agree > 0.99
    # values stay in [-1, 1] and are geometric only: the multiset of pixel values is unchanged
    plain = ShardDataset(shards, "train", image_size=256, augment=False)
    for i in range(5):
        a = torch.sort(ds[i]["sem"].flatten()).values
        b = torch.sort(plain[i]["sem"].flatten()).values
        assert torch.equal(a, b)


def test_augmentation_reproducible_and_varies_by_epoch(shards):
    a = ShardDataset(shards, "train", augment=True, seed=5)
    b = ShardDataset(shards, "train", augment=True, seed=5)
    ks_a = [a.transform_index(i) for i in range(len(a))]
    assert ks_a == [b.transform_index(i) for i in range(len(b))]
    assert torch.equal(a[3]["sem"], b[3]["sem"])
    a.set_epoch(1)
    assert [a.transform_index(i) for i in range(len(a))] != ks_a
    # without set_epoch a second read of the same index draws again (num_workers=0 training)
    c = ShardDataset(shards, "train", augment=True, seed=5)
    first = [c.transform_index(i) for i in range(len(c))]
    for i in range(len(c)):
        c[i]
    assert [c.transform_index(i) for i in range(len(c))] != first
    off = ShardDataset(shards, "train", augment=False)
    assert {off.transform_index(i) for i in range(len(off))} == {0}


def test_balanced_sampler_gives_each_family_equal_share(shards):
    ds = ShardDataset(shards, "train")
    counts = Counter(ds.item_families)
    assert counts["line_space"] > 5 * counts["rare"]  # imbalanced to begin with
    sampler = balanced_sampler(ds, seed=0, num_samples=30000)
    draws = Counter(ds.item_families[i] for i in sampler)
    for fam in ds.families:
        assert draws[fam] / 30000 == pytest.approx(1 / 3, abs=0.02), draws
    assert list(balanced_sampler(ds, seed=1)) == list(balanced_sampler(ds, seed=1))
    assert len(balanced_sampler(ds, seed=1)) == len(ds)

    class Plain(torch.utils.data.Dataset):  # any dataset with a "family" key works too
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"family": "a" if i < 3 else "b"}

    w = balanced_sampler(Plain(), seed=0).weights
    assert w.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])


def test_dataloader_batches(shards):
    ds = ShardDataset(shards, "train", image_size=64, augment=True)
    loader = DataLoader(ds, batch_size=4, sampler=balanced_sampler(ds, 0))
    batch = next(iter(loader))
    assert batch["sem"].shape == (4, 1, 64, 64) and batch["layout"].shape == (4, 1, 64, 64)
    assert len(batch["family"]) == 4 and len(batch["id"]) == 4


def test_dataloader_with_workers(shards):
    ds = ShardDataset(shards, "val", image_size=32)
    ids = [i for b in DataLoader(ds, batch_size=2, num_workers=2) for i in b["id"]]
    assert sorted(ids) == sorted(ds.ids)


def test_shards_are_memory_mapped(shards):
    rel = read_index(shards)["splits"]["train"]["shards"][0]
    mm = npz_members(shards / rel)
    with np.load(shards / rel, allow_pickle=False) as z:
        for key in z.files:
            np.testing.assert_array_equal(mm[key], z[key])
    assert isinstance(mm["sem"], np.memmap) and isinstance(mm["layout"], np.memmap)


def test_compressed_npz_still_readable(tmp_path):
    np.savez_compressed(
        tmp_path / "c.npz", sem=np.ones((2, 3, 3), np.uint8), ids=np.array(["a", "b"])
    )
    mm = npz_members(tmp_path / "c.npz")
    assert mm["sem"].sum() == 18 and mm["ids"].tolist() == ["a", "b"]


def test_source_filter_and_no_clean(tmp_path, shards):
    src = make_pairs(tmp_path / "nc", {"a": 6, "b": 4}, with_clean=False, prefix="n")
    write_shards([src, shards], tmp_path / "mix")
    only = ShardDataset(tmp_path / "mix", "train", source="nc")
    assert set(only.item_sources) == {"nc"} and all(i.startswith("n") for i in only.ids)
    item = only[0]
    assert "clean" not in item  # clean only when every pair of the shard set has one
    assert read_index(tmp_path / "mix")["has_clean"] is False


def test_errors(shards, tmp_path):
    with pytest.raises(SemlayoutError, match="unknown split 'dev'"):
        ShardDataset(shards, "dev")
    with pytest.raises(SemlayoutError, match="index.json is missing"):
        ShardDataset(tmp_path, "train")
    with pytest.raises(SemlayoutError, match="image_size"):
        ShardDataset(shards, "train", image_size=4)
    with pytest.raises(SemlayoutError, match="no pairs from source"):
        ShardDataset(shards, "train", source="elsewhere")
    ds = ShardDataset(shards, "val")
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds[-1]["id"] == ds.ids[-1]


def test_tiny_shards_fixture_dataset(tiny_shards):
    ds = ShardDataset(tiny_shards, "train", image_size=64, augment=True)
    item = ds[0]
    assert item["sem"].shape == (1, 64, 64)
    assert float(item["sem"].abs().max()) <= 1.0


def test_count_reads_replays_a_mid_epoch_resume(shards):
    rng = np.random.default_rng(0)
    full = ShardDataset(shards, "train", image_size=64, augment=True, seed=4)
    order = rng.integers(
        0, len(full), 3 * len(full)
    ).tolist()  # with repeats, like a balanced sampler
    full.set_epoch(2)
    straight = [full[i]["sem"] for i in order]
    resumed = ShardDataset(shards, "train", image_size=64, augment=True, seed=4)
    resumed.set_epoch(2)
    cut = len(order) // 2
    resumed.count_reads(order[:cut])
    tail = [resumed[i]["sem"] for i in order[cut:]]
    assert all(torch.equal(a, b) for a, b in zip(straight[cut:], tail, strict=True))


def test_worker_state_drops_open_shards(shards):
    ds = ShardDataset(shards, "val", image_size=32)
    ds[0]
    assert ds._cache and ds.__getstate__()["_cache"] == {}  # spawn workers reopen, not copy


def test_dataloader_spawn_workers(shards):
    ds = ShardDataset(shards, "val", image_size=32)
    ds[0]
    loader = DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    assert sorted(i for b in loader for i in b["id"]) == sorted(ds.ids)


def test_crop_takes_the_same_window_of_every_image(shards):
    ds = ShardDataset(shards, "train", image_size=256, augment=True, seed=1, crop=128)
    full = ShardDataset(shards, "train", image_size=256, augment=False)
    offsets = set()
    for i in range(len(ds)):
        k, top, left = ds._draw(i)
        item = ds[i]
        assert item["sem"].shape == item["layout"].shape == (1, 128, 128)
        ref = full[i]
        for key in ("sem", "layout"):
            window = to_uint8(ref[key][0])[top : top + 128, left : left + 128]
            np.testing.assert_array_equal(to_uint8(item[key][0]), dihedral(window, k))
        offsets.add((top, left))
    assert len(offsets) > len(ds) // 2  # crops move around
    with pytest.raises(SemlayoutError, match="crop must be an integer in"):
        ShardDataset(shards, "train", image_size=64, crop=128)
