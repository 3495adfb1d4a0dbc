"""The network side of weakly supervised localisation: photo -> network -> saliency -> graph cut -> box,
and the `localise` / `evaluate localisation` / `evaluate segmentation` commands.

A tiny random network checks the glue (the maps are the vis.saliency maps, put back on the photo's
grid; errors and the whole-image fallback).  SqueezeNet on a handful of real photos from ../shared
checks the commands end to end.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from clirun import run_cli
from scratchnet.layers import Conv2d, GlobalAvgPool, Linear, MaxPool2d, ReLU
from scratchnet.localise import network as locnet
from scratchnet.models import Network
from scratchnet.vis.saliency import saliency, ten_crop_saliency

PRE = {"channel_order": "RGB", "mean": [120.0, 110.0, 100.0], "scale": 1 / 64, "resize": 20}
NAMES = ["goose", "ostrich", "cup", "lemon", "limousine"]


def tiny_net(seed=0):
    """conv-ReLU-pool-conv-ReLU, global average, linear: 16x16 RGB -> 5 classes, random weights."""
    net = Network([("conv1", Conv2d(3, 6, 3, padding=1)), ("relu1", ReLU()), ("pool1", MaxPool2d(2, 2)),
                   ("conv2", Conv2d(6, 8, 3, padding=1)), ("relu2", ReLU()), ("gap", GlobalAvgPool()),
                   ("fc", Linear(8, 5))], input_shape=(3, 16, 16), class_names=list(NAMES),
                  preprocess=dict(PRE), name="tiny")
    rng = np.random.default_rng(seed)
    for _, layer, key in net.named_params():
        layer.params[key] = (rng.standard_normal(layer.params[key].shape) * 0.5).astype(np.float32)
    return net


def photo(h, w, seed=1):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def net():
    return tiny_net()


# --------------------------------------------------------------------------------------------- glue

def test_single_view_maps_are_the_vis_saliency_maps_of_the_stretched_photo(net):
    from scratchnet.io.images import resize
    from scratchnet.vis.display import prepare_pixels
    img = photo(16, 16)
    r = locnet.network_saliency(net, [img], top=2, extra=[[4]])[0]
    ref = saliency(net, prepare_pixels(net, img), np.array([r["classes"]]))
    assert r["classes"][:2] == list(np.argsort(-r["scores"])[:2]) and r["classes"][2] == 4
    np.testing.assert_allclose(r["maps"], ref.maps[0], rtol=1e-5, atol=1e-8)
    # a photo of another size: the map of its stretched view, resized back onto its own grid
    big = photo(24, 40, seed=2)
    r = locnet.network_saliency(net, [big], top=0, extra=[[3]])[0]
    ref = saliency(net, prepare_pixels(net, resize(big, (16, 16))), 3).maps[0]
    assert r["maps"].shape == (1, 24, 40)
    np.testing.assert_allclose(r["maps"][0], resize(ref, (24, 40)), rtol=1e-5, atol=1e-8)


def test_batched_photos_equal_one_at_a_time(net):
    """By default a photo's maps are a function of the photo alone, to the bit, whatever else is in the
    call and whichever classes are asked for besides; in a batch they agree to rounding (float64 here,
    where rounding cannot plausibly move a value across a ReLU kink or a pooling tie)."""
    imgs = [photo(16, 16, s) for s in range(3)]
    extra = ([0], [], [4])
    net64 = tiny_net().astype(np.float64)
    together = locnet.network_saliency(net64, imgs, top=2, extra=extra, batch_size=3)
    default = locnet.network_saliency(net, imgs, top=2, extra=extra)
    for img, e, t, d in zip(imgs, extra, together, default):
        alone = locnet.network_saliency(net, [img], top=2, extra=[e])[0]
        alone64 = locnet.network_saliency(net64, [img], top=2, extra=[e])[0]
        assert alone["classes"] == alone64["classes"] == t["classes"] == d["classes"]
        np.testing.assert_allclose(alone64["maps"], t["maps"], rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(alone["maps"], d["maps"])
        np.testing.assert_array_equal(alone["scores"], d["scores"])
        one = locnet.network_saliency(net, [img], top=0, extra=[[d["classes"][-1]]])[0]
        np.testing.assert_array_equal(one["maps"][0], d["maps"][-1])


def test_ten_crop_map_is_the_vis_ten_crop_map(net):
    img = photo(20, 20)                         # already R x R (R = preprocess resize): no stretching
    r = locnet.network_saliency(net, [img], top=1, ten_crop=True)[0]
    ref = ten_crop_saliency(net, img, r["classes"][0])
    np.testing.assert_allclose(r["maps"][0], ref.map, rtol=1e-5, atol=1e-8)
    assert r["scores"][r["classes"][0]] == pytest.approx(ref.score, rel=1e-5)
    import copy
    at_input = copy.deepcopy(net)
    at_input.preprocess["resize"] = at_input.input_shape[1]     # as the networks trained here record it
    with pytest.warns(UserWarning, match="10-crop localisation maps: .* the 5 crops coincide"):
        locnet.network_saliency(at_input, [img], top=1, ten_crop=True)


def test_localise_image_returns_box_in_photo_coordinates(net):
    img = photo(30, 45)
    r = locnet.localise_image(net, img, cls="lemon", pairwise_weight=5.0)
    assert r["class"] == 3 and r["class_name"] == "lemon"
    assert r["mask"].shape == r["saliency"].shape == (30, 45) and r["mask"].dtype == bool
    x0, y0, x1, y1 = r["box"]
    assert 0 <= x0 <= x1 <= 44 and 0 <= y0 <= y1 <= 29
    assert r["fallback"] is None and len(r["top5"]) == 5
    assert locnet.localise_image(net, img)["class"] == r["top5"][0][0]      # default: the top-1 class


def test_localise_image_bad_input_is_a_clear_error(net):
    with pytest.raises(ValueError, match=r"class index 5 is out of range: expected 0\.\.4"):
        locnet.localise_image(net, photo(20, 20), cls=5)
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        locnet.localise_image(net, photo(20, 20), cls="zebra")
    with pytest.raises(ValueError, match=r"too small.*10x12 pixels"):
        locnet.localise_image(net, photo(12, 10))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        locnet.localise_image(net, np.zeros((20, 20, 3), np.float32))
    # an infinite pairwise weight (max-flow never ended on it) is refused before any map is computed
    with pytest.raises(ValueError, match=r"pairwise_weight must be in \[0, 1e\+12\], got inf"):
        locnet.tuned_segment_kwargs(False, pairwise_weight=float("inf"))
    with pytest.raises(ValueError, match="pairwise_weight must be in"):
        locnet.localise_image(net, photo(20, 20), pairwise_weight=float("inf"))


def test_segment_settings_are_checked_before_any_map(net, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a map was computed")
    monkeypatch.setattr(locnet, "network_saliency", boom)
    with pytest.raises(ValueError, match="pairwise_weight must be in"):
        locnet.localise_image(net, photo(20, 20), pairwise_weight=float("inf"))


@pytest.mark.parametrize("argv,message", [
    (["localisation", "--centre-fraction", "1.5"], "--centre-fraction: expected a number in (0, 1], got 1.5"),
    (["localisation", "--threshold-fraction", "0"], "--threshold-fraction: expected a number in (0, 1], got 0"),
    (["segmentation", "--threshold-fraction", "-1"], "--threshold-fraction: expected a number in (0, 1], got -1"),
    (["segmentation", "--threshold-fraction", "x"], "--threshold-fraction: expected a number in (0, 1], got 'x'")])
def test_baseline_fractions_are_refused_by_the_parser(argv, message, tmp_path, capsys):
    """Refused before any map is computed (a whole evaluation's worth, before), naming the option."""
    from scratchnet.cli import main
    with pytest.raises(SystemExit) as e:
        main(["evaluate", *argv, "--data", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_zero_saliency_falls_back_to_the_whole_image():
    net = tiny_net()
    net["fc"].params["W"][:] = 0          # scores no longer depend on the photo: dS/dI = 0 everywhere
    r = locnet.localise_image(net, photo(20, 30))
    assert r["fallback"] == "saliency is all zero"
    assert r["box"] == (0, 0, 29, 19) and r["mask"].all()


def test_draw_result_tints_the_mask_and_draws_the_box():
    img = np.zeros((40, 50, 3), np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:20, 10:20] = True
    out = locnet.draw_result(img, mask, (5, 6, 30, 35), thickness=2)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert tuple(out[6, 15]) == (255, 40, 40) and tuple(out[35, 30]) == (255, 40, 40)   # the box edge
    assert out[15, 15, 1] > 0 and out[15, 15, 0] == 0                                    # green tint
    assert not out[25, 25].any()                                                         # untouched


# --------------------------------------------------------------------------------------------- commands

def test_map_cache_never_returns_maps_of_a_changed_network(tmp_path):
    """The saliency-map cache is keyed by the network's fingerprint, not only its name or file: the same
    network (saved and loaded again) shares its maps; a network whose weights or preprocessing changed
    under the same name or file reads none of the old ones; nor do two data folders of one name share."""
    from scratchnet.localise.cli import MapCache
    from scratchnet.models import load
    net = tiny_net()
    path = net.save(tmp_path / "tiny.npz")
    entry = {"scores": np.arange(5, dtype=np.float32), "classes": [2], "maps": np.ones((1, 7, 9), np.float32)}

    def cache(n, model=str(path)):
        return MapCache(tmp_path / "cache", n, model, False, "gradient", tmp_path / "photos")
    cache(net).put("p0", entry)
    back = cache(load(path)).get("p0", (7, 9), [2])
    assert back is not None and back["classes"] == [2]
    np.testing.assert_array_equal(back["maps"], entry["maps"])
    assert cache(load(path)).folder == cache(net).folder

    changed = tiny_net()
    changed.params_dict()["fc.W"][0, 0] += 1e-3                   # one weight moved, same name and file
    changed.save(path)
    assert cache(load(path)).get("p0", (7, 9), [2]) is None
    assert cache(changed, "squeezenet1_0").folder != cache(net, "squeezenet1_0").folder   # a name alone: no key
    other_pre = tiny_net()
    other_pre.preprocess = dict(other_pre.preprocess, mean=[0.0, 0.0, 0.0])
    assert cache(other_pre).folder != cache(net).folder
    assert tiny_net().fingerprint() == net.fingerprint() != changed.fingerprint()
    elsewhere = MapCache(tmp_path / "cache", net, str(path), False, "gradient", tmp_path / "copy" / "photos")
    assert elsewhere.folder != cache(net).folder                  # another folder of the same name



def test_maps_cached_under_other_blas_kernels_or_threads_are_not_read_back(tmp_path, monkeypatch):
    """OpenBLAS's kernels (OPENBLAS_CORETYPE, or the processor) and thread count move a map's last bits,
    and with them a GraphCut box now and then: a rerun of an evaluation under OPENBLAS_CORETYPE=Haswell
    read the maps an earlier default run had cached, and printed that run's figures. The cache keeps
    them apart now; maps computed under the same setting are still read back."""
    from scratchnet import threads
    from scratchnet.localise.cli import MapCache
    entry = {"scores": np.arange(5, dtype=np.float32), "classes": [2], "maps": np.ones((1, 7, 9), np.float32)}

    def cache():
        return MapCache(tmp_path / "cache", tiny_net(), "tiny", False, "gradient", tmp_path / "photos")
    monkeypatch.setattr(threads, "openblas", lambda: ("SkylakeX", 2))
    cache().put("p0", entry)
    assert cache().get("p0", (7, 9), [2]) is not None
    for other in (("Haswell", 2), ("SkylakeX", 1), None):          # None: a BLAS that does not say
        monkeypatch.setattr(threads, "openblas", lambda o=other: o)
        assert cache().get("p0", (7, 9), [2]) is None, other
        cache().put("p0", entry)
    assert len(list((tmp_path / "cache").rglob("p0.npz"))) == 4


def test_an_evaluation_under_other_openblas_threads_computes_its_own_maps(shared, tmp_path):
    """End to end, each run in a fresh process (OpenBLAS reads its settings when it loads): a second
    evaluation with OPENBLAS_NUM_THREADS=1 after one with 2, on one --cache, computes its own map (a
    folder of its own) rather than reading the first run's; a third with 2 reads the first's."""
    import os
    import subprocess
    import sys

    from scratchnet import threads
    if threads.openblas() is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS that tells its kernels and threads")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus < 2:
        pytest.skip("OpenBLAS caps its threads at the CPUs this process may use: one here, so 2 is 1")
    argv = [sys.executable, "-m", "scratchnet", "evaluate", "localisation", "--model", "squeezenet1_0", "--data",
            str(shared / "data" / "imagenet-val-dev"), "--limit", "1", "--cache", str(tmp_path / "cache")]
    said = []
    for n in ("2", "1", "2"):
        done = subprocess.run(argv, env=dict(os.environ, OPENBLAS_NUM_THREADS=n), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        said.append(re.search(r"\d+ computed, \d+ from the cache", done.stderr).group())
    assert said == ["1 computed, 0 from the cache", "1 computed, 0 from the cache", "0 computed, 1 from the cache"]
    folders = sorted(p.parent.parent.name for p in (tmp_path / "cache").rglob("*.npz"))
    assert len(folders) == 2 and folders[0].endswith("-1t") and folders[1].endswith("-2t"), folders

def test_localise_command_writes_png_and_json(shared, tmp_path, capsys):
    img = sorted((shared / "data" / "imagenet-val-dev" / "images").glob("*.JPEG"))[0]
    out, _ = run_cli(["localise", str(img), "--model", "squeezenet1_0", "--out", str(tmp_path),
                      "--pairwise", "5"], capsys)
    (r,) = out["results"]
    for f in r["files"].values():
        assert Path(f).exists()
    assert json.loads(Path(r["files"]["json"]).read_text()) == r
    x0, y0, x1, y1 = r["box"]
    assert 0 <= x0 <= x1 <= 226 and 0 <= y0 <= y1 <= 226
    assert r["class"] == r["top5"][0]["class"] and r["segment"]["pairwise_weight"] == 5.0
    from scratchnet.io.images import load_image
    assert load_image(r["files"]["overlay"]).shape == (227, 227, 3)


def test_localise_command_bad_class_is_one_clear_line(shared, tmp_path, capsys):
    from scratchnet.cli import main
    img = sorted((shared / "data" / "imagenet-val-dev" / "images").glob("*.JPEG"))[0]
    assert main(["localise", str(img), "--model", "squeezenet1_0", "--class", "1000",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "class index 1000 is out of range: expected 0..999" in err and "Traceback" not in err
    assert "localising in" not in err                          # said before any photo's work began
    assert not (tmp_path / "out").exists()                     # nothing written, not even an empty folder


def test_localise_command_reads_every_photo_first_and_keeps_same_named_ones_apart(tmp_path, capsys):
    """A bad photo at the end of the list used to stop the command after the others' files were
    written, with no JSON; and a/x.png, b/x.png wrote x's files twice. Like `saliency`, it now
    reads every photo before any work, and names the second x_2."""
    from scratchnet.cli import main
    from scratchnet.io.images import save_png
    model = tiny_net().save(tmp_path / "tiny.npz")
    a = save_png(tmp_path / "a" / "x.png", photo(20, 24, seed=1))
    b = save_png(tmp_path / "b" / "x.png", photo(18, 16, seed=2))
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    out = tmp_path / "out"
    assert main(["localise", str(a), str(b), str(bad), "--model", str(model), "--out", str(out)]) == 2
    assert "bad.png" in capsys.readouterr().err and not out.exists()
    res, _ = run_cli(["localise", str(a), str(b), "--model", str(model), "--out", str(out)], capsys)
    assert [Path(r["files"]["json"]).name for r in res["results"]] == ["x.json", "x_2.json"]
    assert [json.loads(Path(r["files"]["json"]).read_text())["image"] for r in res["results"]] == [str(a), str(b)]


def test_evaluate_localisation_on_five_photos(shared, tmp_path, capsys):
    data = shared / "data" / "imagenet-val-dev"
    argv = ["evaluate", "localisation", "--model", "squeezenet1_0", "--data", str(data), "--limit", "5",
            "--cache", str(tmp_path / "cache"), "--details", str(tmp_path / "details.jsonl")]
    res, err = run_cli(argv, capsys)
    assert res["images"] == 5 and "5 computed" in err
    for key in ("top1_cls_error", "top5_cls_error"):
        assert 0 <= res[key] <= 1
    assert set(res["methods"]) == {"graphcut", "whole_image", "centre_box", "saliency_threshold"}
    for m in res["methods"].values():
        for key in ("top1_loc_error", "top5_loc_error", "gt_known_loc_error"):
            assert 0 <= m[key] <= 1
        assert m["top5_loc_error"] <= m["top1_loc_error"]
        assert m["gt_known_images"] == 5           # the true class's map is computed for every photo
    lines = (tmp_path / "details.jsonl").read_text().splitlines()
    assert len(lines) == 5 and len(json.loads(lines[0])["top5"]) == 5
    # the second run reads the cached maps and gives the same numbers
    again, err = run_cli(argv[:-2] + ["--centre-fraction", str(res["methods"]["centre_box"]["fraction"])],
                         capsys)
    assert "0 computed, 5 from the cache" in err
    assert again["methods"]["graphcut"] == res["methods"]["graphcut"]
    assert "fraction_chosen_on_these_images" not in again["methods"]["centre_box"]


def test_evaluate_localisation_skips_an_unreadable_photo_and_says_so(shared, tmp_path, capsys):
    src = shared / "data" / "imagenet-val-dev"
    rows = (src / "boxes.csv").read_text().splitlines()
    files = sorted({r.split(",")[0] for r in rows[1:]})[:3]
    data = tmp_path / "dev"
    (data / "images").mkdir(parents=True)
    for f in files[:2]:
        (data / "images" / f).symlink_to(src / "images" / f)
    (data / "images" / files[2]).write_bytes((src / "images" / files[2]).read_bytes()[:200])   # truncated
    (data / "boxes.csv").write_text("\n".join(rows[:1] + [r for r in rows[1:] if r.split(",")[0] in files]) + "\n")
    res, err = run_cli(["evaluate", "localisation", "--model", "squeezenet1_0", "--data", data, "--no-cache"],
                       capsys)
    assert res["images"] == 2 and res["skipped_unreadable"] == 1
    assert "skipping unreadable file" in err and files[2] in err


def test_a_cache_filled_by_another_subset_gives_the_same_results(shared, tmp_path, capsys):
    """The map cache holds one photo's maps computed alone, so a run reading maps that an earlier run
    of another subset left gives, photo by photo, what a run from an empty cache gives. A batched run
    (--batch-size > 1: maps that depend on their batch neighbours) leaves the cache alone."""
    data = shared / "data" / "imagenet-val-dev"
    base = ["evaluate", "localisation", "--model", "squeezenet1_0", "--data", str(data),
            "--centre-fraction", "0.8", "--threshold-fraction", "0.05"]
    cold, _ = run_cli(base + ["--limit", "4", "--no-cache", "--details", str(tmp_path / "cold.jsonl")], capsys)
    run_cli(base + ["--limit", "3", "--offset", "1", "--cache", str(tmp_path / "cache")], capsys)
    files = {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").rglob("*.npz")}
    assert len(files) == 3
    batched, err = run_cli(base + ["--limit", "4", "--batch-size", "2", "--cache", str(tmp_path / "cache")], capsys)
    assert "the map cache is off" in err and "4 computed, 0 from the cache" in err
    assert batched["batch_size"] == 2
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").rglob("*.npz")} == files
    warm, err = run_cli(base + ["--limit", "4", "--cache", str(tmp_path / "cache"),
                                "--details", str(tmp_path / "warm.jsonl")], capsys)
    assert "1 computed, 3 from the cache" in err
    assert warm["methods"] == cold["methods"]
    assert (tmp_path / "warm.jsonl").read_text() == (tmp_path / "cold.jsonl").read_text()


def test_maps_of_all_five_guesses_give_the_same_errors_as_the_true_class_map(shared, tmp_path, capsys):
    """A wrong-class guess is wrong whatever its box: computing its map changes nothing."""
    data = shared / "data" / "imagenet-val-dev"
    argv = ["evaluate", "localisation", "--model", "squeezenet1_0", "--data", str(data), "--limit", "3",
            "--offset", "5", "--no-cache", "--centre-fraction", "0.8", "--threshold-fraction", "0.05"]
    only_true, _ = run_cli(argv, capsys)
    all_five, _ = run_cli(argv + ["--all-maps"], capsys)
    assert all_five["methods"] == only_true["methods"] and all_five["all_maps"]


def test_the_evaluations_decode_a_few_photos_at_a_time(shared, tmp_path, capsys, monkeypatch):
    """Every photo was decoded, and held with its maps, before the first map (localisation: 18 GB for
    the 50,000 ILSVRC val photos at 227 px, 65 GB at full size; segmentation: 3 GB for the 7,349 pets).
    Now about 8 at a time: each network pass finds at most its chunk decoded beyond the earlier ones."""
    import sys

    from scratchnet.io import images
    ev = sys.modules["scratchnet.localise.evaluate"]      # (scratchnet.localise.evaluate is also a function)
    decoded, seen = [0], []
    for module, name in ((images, "load_image"), (ev, "read_pet")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, **k: decoded.__setitem__(
            0, decoded[0] + k.get("decode", True)) or real(*a, **k))            # (headers are not counted)
    real_saliency = locnet.network_saliency
    monkeypatch.setattr(locnet, "network_saliency", lambda net, imgs, **k: seen.append((decoded[0], len(imgs)))
                        or real_saliency(net, imgs, **k))
    for what, data in (("localisation", "imagenet-val-dev"), ("segmentation", "oxford-pets-dev")):
        decoded[0], seen[:] = 0, []
        res, _ = run_cli(["evaluate", what, "--model", "squeezenet1_0", "--data", str(shared / "data" / data),
                          "--limit", "12", "--no-cache", "--centre-fraction", "0.8", "--threshold-fraction", "0.05"]
                         if what == "localisation" else
                         ["evaluate", what, "--model", "squeezenet1_0", "--data", str(shared / "data" / data),
                          "--limit", "12", "--no-cache", "--threshold-fraction", "0.05"], capsys)
        assert res["images"] == 12 and decoded[0] == 12
        assert seen == [(8, 8), (12, 4)], (what, seen)        # photos decoded at each pass, photos in it


def test_evaluate_segmentation_on_three_pets(shared, tmp_path, capsys):
    data = shared / "data" / "oxford-pets-dev"
    res, _ = run_cli(["evaluate", "segmentation", "--model", "squeezenet1_0", "--data", str(data),
                      "--limit", "3", "--no-cache"], capsys)
    assert res["images"] == 3
    for m in ("graphcut", "saliency_threshold", "whole_image"):
        assert 0 <= res["methods"][m]["mean_iou"] <= 1
    assert res["methods"]["saliency_threshold"]["fraction_chosen_on_these_images"] is True


def _some_pets(src, data, n):
    """A pets folder at ``data`` of links to the first ``n`` pairs of ``src``: (data, their names)."""
    names = sorted(p.stem for p in (src / "images").glob("*.jpg"))[:n]
    for sub, ext in (("images", "jpg"), ("trimaps", "png")):
        (data / sub).mkdir(parents=True)
        for name in names:
            (data / sub / f"{name}.{ext}").symlink_to(src / sub / f"{name}.{ext}")
    return data, names


def test_evaluate_segmentation_skips_an_unreadable_pet_and_says_so(shared, tmp_path, capsys):
    from scratchnet.localise.evaluate import load_oxford_pets
    src = shared / "data" / "oxford-pets-dev"
    data, names = _some_pets(src, tmp_path / "pets", 3)
    (data / "images" / f"{names[1]}.jpg").unlink()
    (data / "images" / f"{names[1]}.jpg").write_bytes((src / "images" / f"{names[1]}.jpg").read_bytes()[:300])
    with pytest.raises(ValueError, match=f"cannot read {data / 'images' / names[1]}.jpg"):
        load_oxford_pets(data)
    res, err = run_cli(["evaluate", "segmentation", "--model", "squeezenet1_0", "--data", str(data), "--no-cache"],
                       capsys)
    assert res["images"] == 2 and res["skipped_unreadable"] == 1
    assert f"skipping unreadable file: {data / 'images' / names[1]}.jpg" in err


def test_evaluate_segmentation_refuses_a_trimap_of_another_size_before_any_work(shared, tmp_path, capsys):
    """The pets are decoded as the maps are made, but their headers are read first: a last pair whose
    trimap does not fit its photo stops the command before the network is loaded, as when every pair
    was decoded first (a review found it stopping at the end of the run)."""
    from PIL import Image

    from scratchnet.cli import main
    data, names = _some_pets(shared / "data" / "oxford-pets-dev", tmp_path / "pets", 10)   # past the first 8
    (data / "trimaps" / f"{names[9]}.png").unlink()
    Image.new("L", (7, 5), 1).save(data / "trimaps" / f"{names[9]}.png")
    assert main(["evaluate", "segmentation", "--model", "squeezenet1_0", "--data", str(data), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert f"{names[9]}: trimap (5, 7) does not match image" in err and "saliency" not in err, err
    w, h = Image.open(data / "images" / f"{names[9]}.jpg").size                 # the right size, three bands
    Image.new("RGB", (w, h), (1, 1, 1)).save(data / "trimaps" / f"{names[9]}.png")
    assert main(["evaluate", "segmentation", "--model", "squeezenet1_0", "--data", str(data), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert f"{names[9]}: trimap ({h}, {w}, 3) does not match image ({h}, {w})" in err and "saliency" not in err, err


def test_localisation_record_lists_the_five_guesses_best_first():
    from types import SimpleNamespace
    from scratchnet.localise.cli import _record
    scores = np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.05])
    top = [1, 3, 5, 2, 4]
    cached = [5, 1, 4, 3, 2]                       # a cache entry may hold the maps in another order
    entry = {"scores": scores, "classes": cached, "maps": [np.full((6, 6), c, np.float32) for c in cached]}
    img = np.zeros((6, 6, 3), np.uint8)
    rec = _record(SimpleNamespace(boxes=[[(0, 0, 5, 5)]]), 0, "x", img, 1, entry)
    assert rec.top5 == top
    for j, c in enumerate(top):
        np.testing.assert_array_equal(rec.saliency[j], c)     # guess j's row holds guess j's map


def test_an_extra_class_already_in_the_top_is_not_repeated(net):
    img = photo(16, 16)
    first = locnet.network_saliency(net, [img], top=5)[0]
    top1, fifth = first["classes"][0], first["classes"][4]
    r = locnet.network_saliency(net, [img], top=5, extra=[[top1, fifth]])[0]
    assert r["classes"] == first["classes"] and sorted(r["classes"]) == list(range(5))
    assert r["maps"].shape == (5, 16, 16)
    np.testing.assert_array_equal(r["maps"], first["maps"])
    r = locnet.network_saliency(net, [img], top=2, extra=[[top1, fifth, fifth]])[0]
    assert r["classes"] == first["classes"][:2] + [fifth] and len(r["maps"]) == 3


@pytest.mark.parametrize("argv", [["localise", "a.jpg"],
                                  ["evaluate", "localisation", "--data", "d"],
                                  ["evaluate", "segmentation", "--data", "d"]])
def test_segment_settings_from_the_command_line(argv):
    """Without options: the gradient rule (the paper's saliency) and its single-view tuned settings;
    each of --pairwise, --fg-quantile and --bg-quantile reaches the graph cut."""
    from scratchnet.cli import build_parser
    from scratchnet.localise.cli import segment_kwargs
    parser = build_parser()
    args = parser.parse_args(argv)
    assert args.rule == "gradient" and not args.ten_crop
    assert segment_kwargs(args) == locnet.TUNED_SEGMENT["single"]
    args = parser.parse_args(argv + ["--bg-quantile", "0.1"])
    assert segment_kwargs(args) == dict(locnet.TUNED_SEGMENT["single"], bg_quantile=0.1)
    args = parser.parse_args(argv + ["--ten-crop", "--pairwise", "5", "--fg-quantile", "0.9", "--bg-quantile", "0.2"])
    assert segment_kwargs(args) == {"pairwise_weight": 5.0, "fg_quantile": 0.9, "bg_quantile": 0.2}


def test_two_photos_of_one_stem_do_not_share_a_cached_map(shared, tmp_path, capsys):
    """x.JPEG and x.png (two photos) were one map cache entry, x.npz: the second run gave the first
    photo the other's map, and its box, without a word. The key is the file name now."""
    from PIL import Image
    src = shared / "data" / "imagenet-val-dev"
    rows = (src / "boxes.csv").read_text().splitlines()
    a, b = sorted({r.split(",")[0] for r in rows[1:]})[:2]
    data = tmp_path / "dev"
    (data / "images").mkdir(parents=True)
    (data / "images" / "x.JPEG").symlink_to(src / "images" / a)
    Image.open(src / "images" / b).save(data / "images" / "x.png")
    row = {r.split(",")[0]: r for r in rows[1:]}
    (data / "boxes.csv").write_text("\n".join([rows[0], "x.JPEG" + row[a][len(a):], "x.png" + row[b][len(b):]]) + "\n")
    argv = ["evaluate", "localisation", "--model", "squeezenet1_0", "--data", data, "--cache", tmp_path / "cache",
            "--details", tmp_path / "d.jsonl"]
    first, _ = run_cli(argv, capsys)
    d1 = (tmp_path / "d.jsonl").read_text()
    again, err = run_cli(argv, capsys)
    assert "0 computed, 2 from the cache" in err
    assert (tmp_path / "d.jsonl").read_text() == d1 and again["methods"] == first["methods"]
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 2


def test_photos_with_the_longest_names_get_their_cached_maps(tmp_path):
    """Keyed by file name, a 254-byte photo name made its cache file's name too long (the evaluation
    stopped); such a key is cut and hashed, two such keys stay apart, and a data folder's name that is
    not UTF-8 is hashed too."""
    import os

    from scratchnet.localise.cli import MapCache
    folder = tmp_path / os.fsdecode(b"fotos_\xe9t\xe9")
    cache = MapCache(tmp_path / "cache", tiny_net(), "tiny", False, "gradient", folder)
    entry = dict(scores=np.zeros(3), classes=[1], maps=np.ones((1, 4, 4)))
    a, b = "p" * 249 + ".JPEG", "p" * 249 + ".jpeg"
    cache.put(a, entry)
    cache.put(b, dict(entry, maps=np.zeros((1, 4, 4))))
    assert cache.get(a, (4, 4), [1])["maps"].sum() == 16 and cache.get(b, (4, 4), [1])["maps"].sum() == 0
    assert max(len(os.fsencode(p.name)) for p in cache.folder.iterdir()) <= 255
