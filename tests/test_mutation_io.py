"""Tests proposed by mutation testing of the data path (scratchnet/io/*, models/preprocess.py,
kernels/cpu_augment.py): each one fails on a mutant that the suite let through."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from scratchnet.io.classnames import class_index, imagenet_class_names, imagenet_wnids
from scratchnet.io.datasets import image_folder, imagenet_val_dev, tiny_imagenet
from scratchnet.io.images import load_image, resize
from scratchnet.io.loader import Augment, BatchLoader

from test_io_data import WN3, _make_folder, _tiny_tree   # the miniature data sets of the data tests


# ----------------------------------------------------------------------------- tiny_imagenet

def test_tiny_imagenet_refuses_zero_classes(tmp_path):
    root = _tiny_tree(tmp_path / "tiny", WN3, (1, 2, 30, 40), (3, 4, 50, 60))
    with pytest.raises(ValueError, match=r"classes=0, expected 1\.\.3"):
        tiny_imagenet(root, "train", classes=0)
    with pytest.raises(ValueError, match=r"classes=4, expected 1\.\.3"):
        tiny_imagenet(root, "train", classes=4)
    assert tiny_imagenet(root, "train", classes=3).num_classes == 3


def test_tiny_imagenet_val_per_class_and_start_pick_the_kth_images(tmp_path):
    root = _tiny_tree(tmp_path / "tiny", WN3, (1, 2, 30, 40), (3, 4, 50, 60), per_class=3)
    # val_<k*3+j>.JPEG is class j's k-th image
    first = tiny_imagenet(root, "val", per_class=1)
    assert sorted(p.name for p in first.paths) == ["val_0.JPEG", "val_1.JPEG", "val_2.JPEG"]
    middle = tiny_imagenet(root, "val", per_class=1, start=1)
    assert sorted(p.name for p in middle.paths) == ["val_3.JPEG", "val_4.JPEG", "val_5.JPEG"]
    every = tiny_imagenet(root, "val", per_class=3)              # exactly as many as there are: no error
    assert len(every) == 9 and np.all(np.bincount(every.labels) == 3)
    with pytest.raises(ValueError, match="has only 3 images of n00000010"):
        tiny_imagenet(root, "val", per_class=4)


# ----------------------------------------------------------------------------- image_folder, imagenet-val-dev

def test_image_folder_wnids_are_only_folder_names_that_are_wnids(tmp_path):
    _make_folder(tmp_path, ["n01440764", "n0144076400", "cat", "n1234567x"])
    ds = image_folder(tmp_path)
    assert ds.class_names == ["cat", "n01440764", "n0144076400", "n1234567x"]
    assert ds.class_wnids == ["", "n01440764", "", ""]       # a 10-character or lettered id is no wnid


def test_imagenet_val_dev_refuses_a_label_that_disagrees_with_its_wnid(tmp_path):
    wnids = imagenet_wnids()
    (tmp_path / "images").mkdir()
    rows = [["file", "label", "wnid", "orig_width", "orig_height", "x0", "y0", "x1", "y1"],
            ["a.JPEG", "1", wnids[0], "500", "375", "1", "2", "3", "4"]]          # label 1, tench's wnid
    with open(tmp_path / "boxes.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(ValueError, match="line 2: label 1 and wnid n01440764 disagree"):
        imagenet_val_dev(tmp_path)


# ----------------------------------------------------------------------------- loader

def test_flips_happen_about_half_the_time():
    _, _, flip = Augment(flip=True).draw(20000, np.random.default_rng(0))
    assert abs(flip.mean() - 0.5) < 0.02


def test_loader_refuses_a_zero_scale():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="BatchLoader: scale must be > 0, got 0"):
        BatchLoader(images, np.arange(4), batch_size=2, scale=0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        BatchLoader(images, np.arange(4), batch_size=2, scale=-0.5)


def test_a_per_channel_mean_is_subtracted_in_rgb_order(rng):
    images = rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
    mean = (120.0, 110.0, 100.0)
    loader = BatchLoader(images, np.arange(6), batch_size=6, shuffle=False, mean=mean, scale=0.5, prefetch=0)
    (x, y), = loader.epoch_batches(0)
    expected = (images.transpose(0, 3, 1, 2).astype(np.float32) - np.float32(mean).reshape(1, 3, 1, 1)) * 0.5
    np.testing.assert_array_equal(x, expected)
    assert x[0, 0, 0, 0] == (images[0, 0, 0, 0] - 120.0) * 0.5          # channel 0 is red, less 120


def test_batch_b_draws_from_seed_epoch_b_plus_1_and_reads_images_in_index_order(rng):
    """Batch b's augmentation comes from default_rng([seed, epoch, b + 1]) and its images are read in
    sorted index order. (default_rng([seed, epoch, 0]) is the *same* stream as the shuffle's
    default_rng([seed, epoch]), so numbering batches from 0 would tie batch 0's crops to the order.)"""
    images = rng.integers(0, 256, (20, 6, 7, 3), dtype=np.uint8)
    labels = np.arange(20) % 7
    aug = Augment(pad=2, flip=True)
    loader = BatchLoader(images, labels, batch_size=8, seed=7, augment=aug, prefetch=0)
    order = loader.order(3)
    for b, (x, y) in enumerate(loader.epoch_batches(3)):
        idx = np.sort(order[b * 8:(b + 1) * 8])
        expected = aug.crop_flip(images[idx], np.random.default_rng([7, 3, b + 1]))
        np.testing.assert_array_equal(y, labels[idx])
        np.testing.assert_array_equal(x, expected.transpose(0, 3, 1, 2).astype(np.float32))


def test_iterating_a_loader_runs_the_next_epoch_each_time(rng):
    images = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    loader = BatchLoader(images, np.arange(12), batch_size=4, seed=1, prefetch=0)
    firsts = [next(iter(loader))[1] for _ in range(3)]                 # the first batch of epochs 0, 1, 2
    assert loader.next_epoch == 3
    for e, y in enumerate(firsts):
        np.testing.assert_array_equal(y, np.sort(loader.order(e)[:4]))
    assert len({tuple(y) for y in firsts}) == 3                        # three different epochs


def test_augment_refuses_negative_pad_or_jitter():
    with pytest.raises(ValueError, match="pad and jitter must be >= 0, got pad=0, jitter=-1"):
        Augment(jitter=-1)
    with pytest.raises(ValueError, match="got pad=-2, jitter=0"):
        Augment(pad=-2)


def test_loader_refuses_labels_of_the_wrong_length():
    images = np.zeros((5, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"expected labels \(5,\), got \(4,\)"):
        BatchLoader(images, np.arange(4), batch_size=2)
    with pytest.raises(ValueError, match=r"expected labels \(5,\), got \(6,\)"):
        BatchLoader(images, np.arange(6), batch_size=2)


# ----------------------------------------------------------------------------- images

def test_a_palette_image_s_transparent_colour_becomes_white(tmp_path):
    index = np.array([[0, 1], [1, 0]], np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.save(tmp_path / "pal.png", transparency=0)                     # palette entry 0 is transparent
    with Image.open(tmp_path / "pal.png") as check:
        assert check.mode == "P" and "transparency" in check.info
    img = load_image(tmp_path / "pal.png")
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [255, 255, 255] == img[1, 1].tolist()
    assert img[0, 1].tolist() == [200, 100, 50] == img[1, 0].tolist()


def test_a_crop_as_wide_as_the_resized_strip_still_skips_the_whole_enlargement(monkeypatch):
    """crop == the resized shorter side fits the resized image: the source-box path applies, and a
    1 x 8000 strip is never resized whole to 224 x 1,792,000 pixels."""
    from scratchnet.io import images

    def boom(*a, **k):
        raise AssertionError("the whole enlarged image was made")
    strip = np.random.default_rng(0).integers(0, 256, (1, 8000, 3), dtype=np.uint8)
    monkeypatch.setattr(images, "resize_shorter", boom)
    assert images.resize_shorter_centre_crop(strip, 224, 224).shape == (224, 224, 3)
    assert images.resize_shorter_centre_crop(strip.transpose(1, 0, 2), 224, 224).shape == (224, 224, 3)


# ----------------------------------------------------------------------------- preprocess

def test_prepare_pixels_refuses_one_or_four_channel_arrays():
    from scratchnet.models import Network
    from scratchnet.models.preprocess import prepare, prepare_pixels
    net = Network([], input_shape=(3, 8, 8), preprocess={"mean": [100.0, 110.0, 120.0]})
    for channels in (1, 4):
        img = np.zeros((8, 8, channels), np.uint8)
        with pytest.raises(ValueError, match=rf"image 0: expected an RGB image \(H, W, 3\) uint8.*\(8, 8, {channels}\)"):
            prepare_pixels(net, img)
        with pytest.raises(ValueError, match=r"expected an RGB image \(H, W, 3\) uint8"):
            prepare(net, [np.zeros((8, 8, 3), np.uint8), img])


def test_a_mean_image_is_resized_to_a_non_square_input_in_height_width_order():
    from scratchnet.models import Network
    from scratchnet.models.preprocess import prepare_pixels, to_display
    rng = np.random.default_rng(7)
    mean = (rng.random((3, 8, 8)) * 255).astype(np.float32)
    net = Network([], input_shape=(3, 8, 8), mean_image=mean, preprocess={"mean_image": True})
    img = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)             # 6 rows, 10 columns
    x = prepare_pixels(net, img)
    expected_mean = resize(np.ascontiguousarray(mean.transpose(1, 2, 0)), (6, 10)).transpose(2, 0, 1)
    assert x.shape == (1, 3, 6, 10)
    np.testing.assert_allclose(x[0], img.transpose(2, 0, 1) - expected_mean, atol=1e-4)
    np.testing.assert_array_equal(to_display(net, x)[0], img)


# ----------------------------------------------------------------------------- class names

def test_class_index_with_only_wnids_accepts_indices_in_their_range():
    wnids = ["n00000010", "n00000020", "n00000030"]
    assert class_index(2, wnids=wnids) == 2
    assert class_index("1", wnids=wnids) == 1
    assert class_index("n00000020", wnids=wnids) == 1
    with pytest.raises(IndexError, match=r"0\.\.2"):
        class_index(3, wnids=wnids)


def test_the_two_cranes_and_maillots_are_told_apart_the_right_way_round():
    names, wnids = imagenet_class_names(), imagenet_wnids()
    assert (wnids[134], names[134]) == ("n02012849", "crane (bird)")
    assert (wnids[517], names[517]) == ("n03126707", "crane (machine)")
    assert (names[638], names[639]) == ("maillot (leotard)", "maillot (tank suit)")
    assert class_index("Crane_(bird)") == 134 and class_index("crane (machine)") == 517
