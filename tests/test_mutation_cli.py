"""Tests from a mutation audit of the command-line modules (scratchnet/cli.py, vis/cli.py,
localise/cli.py, train/cli.py, models/cli.py): each kills a planted change that the rest of the suite
let through (an option that did not reach the library, a file or JSON field under the wrong name, a
default or a validation changed). The ones on real photos need ../shared and skip without it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clirun import run_cli
from scratchnet.cli import build_parser, main


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from test_vis import save_tiny_net
    return save_tiny_net(tmp_path_factory.mktemp("net"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from scratchnet.io.images import save_png
    img = (np.random.default_rng(3).random((20, 24, 3)) * 255).astype(np.uint8)
    return save_png(tmp_path_factory.mktemp("img") / "photo.png", img)


# ---------------------------------------------------------------------------------------------
# scratchnet/cli.py
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--centre-fraction", "--threshold-fraction"])
def test_a_fraction_of_zero_is_refused_by_the_parser(flag, capsys):
    """unit_fraction takes (0, 1]: a box of side 0, or a threshold at 0 (the whole image), is refused."""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["evaluate", "localisation", "--model", "m", "--data", "d", flag, "0"])
    assert e.value.code == 2 and f"{flag}: expected a number in (0, 1], got 0" in capsys.readouterr().err
    assert getattr(build_parser().parse_args(["evaluate", "localisation", "--model", "m", "--data", "d", flag, "1"]),
                   flag[2:].replace("-", "_")) == 1.0


def test_the_parsers_defaults_are_the_documented_ones():
    """The defaults that --help and the module docstrings state (each changes what a command computes)."""
    p = build_parser()
    s = p.parse_args(["saliency", "x.png"])
    assert (s.batch_size, s.rule, s.model, s.out) == (16, "gradient", "efficientnet_lite0", "saliency-out")
    c = p.parse_args(["classmodel", "--class", "goose"])
    assert (c.start_noise, c.clip_pct, c.seed, c.clamp, c.batch_size) == (0.0, 0.0, 0, False, 32)
    e = p.parse_args(["evaluate", "classification", "--model", "m", "--data", "d"])
    assert (e.batch_size, e.mode, e.offset, e.limit, e.flip) == (16, "crop", 0, None, False)
    for what in ("localisation", "segmentation"):
        a = p.parse_args(["evaluate", what, "--data", "d"])
        assert (a.model, a.batch_size, a.offset, a.limit, a.rule) == ("squeezenet1_0", 1, 0, None, "gradient")
    assert p.parse_args(["classify", "x.png"]).mode == "crop"


# ---------------------------------------------------------------------------------------------
# scratchnet/vis/cli.py
# ---------------------------------------------------------------------------------------------
def test_cli_classmodel_files_history_and_settings(tiny_path, tmp_path, capsys):
    """One PNG per class named by its class index (not its position in --class); history.json holds
    the objective and the scores per step; --clamp, --clip-pct and --batch-size reach the ascent; the start image is
    the paper's zero image unless --start-noise is given."""
    from scratchnet.vis import classmodel as cm
    out, err = run_cli(["classmodel", "--model", tiny_path, "--class", "lemon", "goose", "--steps", "2", "--clamp",
                        "--clip-pct", "5", "--batch-size", "1", "--out", tmp_path / "c"], capsys)
    assert "classes 1-1 of 2" in err and "classes 2-2 of 2" in err           # --batch-size reaches the ascent
    assert [Path(p).name for p in out["pngs"]] == ["classmodel_3_lemon.png", "classmodel_0_goose.png"]
    s = out["settings"]
    assert s["clamp"] is True and s["clip_pct"] == 5.0
    assert s["start_noise"] == 0.0 and s["momentum"] == cm.DEFAULTS["momentum"] and s["seed"] == 0
    hist = json.loads(Path(out["history"]).read_text())
    assert hist["classes"] == [3, 0] and hist["scores"][-1] == out["final_scores"]
    assert hist["objective"][-1] == out["final_objective"] and hist["objective"] != hist["scores"]


def test_cli_deconv_names_the_reconstruction_and_its_map(tiny_path, photo, tmp_path, capsys):
    """png: the signed reconstruction; map_png: max over channels of its magnitude (as saliency maps)."""
    from scratchnet.io.images import load_image
    from scratchnet.vis.report import signed_image
    from scratchnet.vis.saliency import map_image
    out, _ = run_cli(["deconv", photo, "--model", tiny_path, "--layer", "dw", "--rule", "gradient",
                      "--out", tmp_path / "d"], capsys)
    (r,) = out["results"]
    assert (Path(r["png"]).name, Path(r["map_png"]).name, Path(r["npy"]).name) == \
        ("photo_dw_gradient.png", "photo_dw_gradient_map.png", "photo_dw_gradient.npy")
    g = np.load(r["npy"])
    np.testing.assert_array_equal(load_image(r["png"]), signed_image(g))
    np.testing.assert_array_equal(load_image(r["map_png"]), map_image(np.abs(g).max(axis=0)))


def test_cli_compare_rules_checks_the_middle_layer_by_default(tiny_path, photo, capsys):
    out, _ = run_cli(["compare-rules", photo, "--model", tiny_path, "--check-pixels", "2"], capsys)
    layers = [t["layer"] for t in out["layers"]]
    assert len(layers) >= 3 and out["gradient_check"]["layer"] == layers[len(layers) // 2]


def test_cli_demo_steps_reach_the_class_models(tiny_path, tmp_path, capsys):
    from scratchnet.io.images import save_png
    img = save_png(tmp_path / "p.png", (np.random.default_rng(2).random((20, 24, 3)) * 255).astype(np.uint8))
    out, _ = run_cli(["demo", "--model", tiny_path, "--quick", "--steps", "2", "--photos", img, img,
                      "--out", tmp_path / "demo"], capsys)
    summary = json.loads((Path(out["index"]).parent / "summary.json").read_text())
    (m,) = summary["models"].values()
    assert [c["settings"]["steps"] for c in m["class_models"]] == [2]


def test_demo_class_model_steps_are_the_documented_ones():
    """demo --steps: "default classmodel.DEFAULTS['steps'], 10 with --quick"; a given number wins."""
    from scratchnet.vis import classmodel as cm
    from scratchnet.vis.report import class_model_settings
    assert class_model_settings(False) == cm.DEFAULTS
    assert class_model_settings(True)["steps"] == 10 and class_model_settings(True, steps=3)["steps"] == 3


def test_demo_quick_measures_the_localisation_error_on_50_photos_by_default(shared, tmp_path, capsys, monkeypatch):
    """--loc-photos: "default 2000, 50 with --quick" (the measurement itself is stubbed out here)."""
    from scratchnet.io.datasets import tiny_imagenet
    from scratchnet.models import paper_net
    from scratchnet.vis import report
    ds = tiny_imagenet(shared / "data" / "tiny-imagenet-200", "val")
    net = paper_net(64, num_classes=200, width=0.0625, seed=0, class_names=ds.class_names)
    net.mean_image = np.full((3, 64, 64), 110.0, np.float32)
    net.preprocess = dict(net.preprocess, mean_image=True, scale=1 / 64)
    net.save(tmp_path / "tiny.npz")
    asked = []
    monkeypatch.setattr(report, "section_localisation_error", lambda page, net, tag, n, progress: asked.append(n) or {})
    run_cli(["demo", "--model", tmp_path / "tiny.npz", "--quick", "--steps", "1", "--out", tmp_path / "demo"], capsys)
    assert asked == [50]


# ---------------------------------------------------------------------------------------------
# scratchnet/localise/cli.py
# ---------------------------------------------------------------------------------------------
def _loc_net(tmp_path):
    from test_localise_cli import tiny_net
    return tiny_net(), tiny_net().save(tmp_path / "tiny.npz")


@pytest.mark.parametrize("extra, kw", [(["--class", "lemon", "--rule", "guided"], dict(cls="lemon", rule="guided")),
                                       (["--ten-crop", "--class", "2"], dict(cls="2", ten_crop=True))])
def test_localise_command_passes_class_rule_and_ten_crop_to_the_library(extra, kw, tmp_path, capsys):
    from scratchnet.io.images import save_png
    from scratchnet.localise.network import localise_image
    net, model = _loc_net(tmp_path)
    img = (np.random.default_rng(5).random((40, 48, 3)) * 255).astype(np.uint8)
    path = save_png(tmp_path / "p.png", img)
    out, _ = run_cli(["localise", path, "--model", model, "--out", tmp_path / "o"] + extra, capsys)
    (r,) = out["results"]
    want = localise_image(net, img, kw.pop("cls"), **kw)
    assert (r["class"], r["box"], r["rule"], r["ten_crop"]) == \
        (want["class"], list(want["box"]), kw.get("rule", "gradient"), kw.get("ten_crop", False))
    assert r["score"] == pytest.approx(want["score"], rel=1e-6)
    from scratchnet.io.images import load_image
    np.testing.assert_array_equal(load_image(r["files"]["mask"])[..., 0] > 127, want["mask"])


def test_map_cache_keeps_each_rule_and_view_apart(tmp_path):
    """A guided run must not read the gradient maps an earlier run cached (nor single-view maps 10-crop ones)."""
    from scratchnet.localise.cli import MapCache
    net, _ = _loc_net(tmp_path)
    folders = {MapCache(tmp_path / "cache", net, "tiny", ten_crop, rule, tmp_path / "photos").folder
               for ten_crop in (False, True) for rule in ("gradient", "deconvnet", "guided")}
    assert len(folders) == 6 and None not in folders


def test_evaluate_localisation_threshold_fraction_and_details_names(shared, tmp_path, capsys):
    from scratchnet.io.classnames import imagenet_class_names
    names = imagenet_class_names()
    res, err = run_cli(["evaluate", "localisation", "--model", "squeezenet1_0", "--data",
                        shared / "data" / "imagenet-val-dev", "--offset", "3", "--limit", "2", "--no-cache",
                        "--threshold-fraction", "0.3", "--all-maps", "--details", tmp_path / "d.jsonl"], capsys)
    assert "maps: all five guesses and the true class" in err and res["all_maps"] is True
    st = res["methods"]["saliency_threshold"]
    assert st["fraction"] == 0.3 and "fraction_chosen_on_these_images" not in st
    details = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert any(d["top5"][0] != d["gt_label"] for d in details)      # photos 3, 4: SqueezeNet's top-1 is wrong
    for d in details:
        assert d["gt_name"] == names[d["gt_label"]] and d["top5_names"] == [names[c] for c in d["top5"]]


def test_evaluate_segmentation_takes_offset_and_threshold_fraction(shared, tmp_path, capsys):
    src = shared / "data" / "oxford-pets-dev"
    names = sorted(p.stem for p in (src / "images").glob("*.jpg"))[:2]
    data = tmp_path / "pets"
    for sub, ext in (("images", "jpg"), ("trimaps", "png")):
        (data / sub).mkdir(parents=True)
        for n in names:
            (data / sub / f"{n}.{ext}").symlink_to(src / sub / f"{n}.{ext}")
    net, model = _loc_net(tmp_path)
    base = ["evaluate", "segmentation", "--model", model, "--data", data, "--no-cache"]
    res, _ = run_cli(base + ["--offset", "1", "--threshold-fraction", "0.4"], capsys)
    assert res["images"] == 1 and res["offset"] == 1
    from scratchnet.localise.evaluate import load_oxford_pets, mask_iou_trimap
    from scratchnet.localise.graphcut import segment
    from scratchnet.localise.network import TUNED_SEGMENT, network_saliency
    (pet,) = load_oxford_pets(data, names=names[1:])                # the second photo, and only it
    seg = segment(pet.image, network_saliency(net, [pet.image], top=1)[0]["maps"][0], **TUNED_SEGMENT["single"])
    gc = res["methods"]["graphcut"]
    assert gc["fallbacks"] == int(not seg.ok)
    assert gc["mean_iou"] == pytest.approx(mask_iou_trimap(seg.mask, pet.trimap))
    st = res["methods"]["saliency_threshold"]
    assert st["fraction"] == 0.4 and st["fraction_chosen_on_these_images"] is False
    assert main([str(a) for a in base + ["--offset", "2"]]) == 2
    assert "--offset 2 leaves no photos: the data set has 2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# scratchnet/train/cli.py
# ---------------------------------------------------------------------------------------------
def test_a_new_train_run_takes_the_documented_defaults(tmp_path, capsys):
    """Each option left out of a new run gets the default its --help states."""
    from test_train import _folder, _run_config
    data = _folder(tmp_path / "data", ["cats", "dogs"], n=2)
    assert main(["train", "--data", str(data), "--input-size", "32", "--width", "0.0625", "--epochs", "1",
                 "--init", "gaussian", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    c = _run_config(tmp_path / "run")
    assert (c["batch_size"], c["lr"], c["momentum"], c["weight_decay"], c["seed"], c["scale"], c["schedule"]) == \
        (128, 0.01, 0.9, 5e-4, 0, 1 / 64, "step")
    assert (c["extra"]["dropout"], c["extra"]["init_std"], c["extra"]["arch"]) == (0.5, 0.01, "paper")


def test_train_seed_and_dropout_reach_the_network_and_a_resume_keeps_the_seed(tmp_path, capsys, monkeypatch):
    import scratchnet.models as models
    from test_train import _folder, _run_config
    seen, real = [], models.paper_net
    monkeypatch.setattr(models, "paper_net", lambda *a, **k: seen.append(k) or real(*a, **k))
    data, run, cache = _folder(tmp_path / "data", ["cats", "dogs"], n=2), tmp_path / "run", str(tmp_path / "cache")
    assert main(["train", "--data", str(data), "--input-size", "32", "--width", "0.0625", "--epochs", "1",
                 "--seed", "3", "--dropout", "0.25", "--cache", cache, "--out", str(run)]) == 0
    assert (seen[0]["seed"], seen[0]["dropout"]) == (3, 0.25)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--cache", cache]) == 0
    capsys.readouterr()
    c = _run_config(run)
    assert (c["seed"], c["extra"]["dropout"], c["epochs"]) == (3, 0.25, 2)
    assert (seen[-1]["seed"], seen[-1]["dropout"]) == (3, 0.25)


# ---------------------------------------------------------------------------------------------
# scratchnet/models/cli.py
# ---------------------------------------------------------------------------------------------
def _two_class_net_and_folder(tmp_path):
    """A 2-class network (green: class 0 goldfish, red: class 1 tench) and an ImageFolder of one red and
    one green 16x8 photo."""
    from PIL import Image

    from scratchnet.layers import Conv2d, GlobalAvgPool
    from scratchnet.models import Network
    conv = Conv2d(3, 2, 1)
    conv.params["W"][:, :, 0, 0] = np.array([[0, 1, 0], [1, 0, 0]], np.float32)
    net = Network([("conv", conv), ("gap", GlobalAvgPool())], input_shape=(3, 8, 8),
                  class_names=["goldfish", "tench"], preprocess={"crop": 8, "resize": 8},
                  arch={"class_wnids": ["n01443537", "n01440764"]})
    for wnid, colour in [("n01440764", (255, 0, 0)), ("n01443537", (0, 255, 0))]:
        (tmp_path / "data" / wnid).mkdir(parents=True)
        Image.new("RGB", (16, 8), colour).save(tmp_path / "data" / wnid / "a.png")
    return net.save(tmp_path / "two.npz"), tmp_path / "data"


def test_evaluate_and_classify_pass_mode_to_the_preprocessing(tmp_path, capsys, monkeypatch):
    import scratchnet.models.preprocess as pre
    path, data = _two_class_net_and_folder(tmp_path)
    seen, real = [], pre.prepare
    monkeypatch.setattr(pre, "prepare", lambda *a, **k: seen.append(k.get("mode", "crop")) or real(*a, **k))
    out, _ = run_cli(["evaluate", "classification", "--model", path, "--data", data, "--mode", "stretch"], capsys)
    assert out["mode"] == "stretch" and out["images"] == 2 and out["top1"] == 1.0 and seen == ["stretch"]
    seen.clear()
    out, _ = run_cli(["classify", data / "n01440764" / "a.png", "--model", path, "--mode", "stretch", "--topk", "1"],
                     capsys)
    assert seen == ["stretch"] and out["results"][0]["top"][0]["name"] == "tench"
    seen.clear()
    out, _ = run_cli(["evaluate", "classification", "--model", path, "--data", data, "--limit", "1"], capsys)
    assert seen == ["crop"] and out["images"] == 1
    assert out["unmatched_images"] == 0          # images of classes the network lacks, not those --limit left out


def test_evaluate_flip_averages_both_views_not_only_the_mirror(tmp_path, capsys):
    """Class 0: red on the left (weight 1), class 1: red on the right (weight 0.5). A photo red on its left
    scores (a, 0), its mirror (0, a/2): the average (a/2, a/4) is still class 0; the mirror alone is not."""
    from PIL import Image

    from scratchnet.layers import Flatten, Linear
    from scratchnet.models import Network
    W = np.zeros((2, 3, 8, 8), np.float32)
    W[0, 0, :, :4], W[1, 0, :, 4:] = 1.0, 0.5
    fc = Linear(3 * 8 * 8, 2)
    fc.params["W"], fc.params["b"] = W.reshape(2, -1), np.zeros(2, np.float32)
    net = Network([("flat", Flatten()), ("fc", fc)], input_shape=(3, 8, 8), class_names=["left", "right"],
                  preprocess={"crop": 8, "mean": [0.0, 0.0, 0.0]}, arch={"class_wnids": ["n01440764", "n01443537"]})
    path = net.save(tmp_path / "lr.npz")
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :4, 0] = 255
    (tmp_path / "data" / "n01440764").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "data" / "n01440764" / "a.png")
    out, _ = run_cli(["evaluate", "classification", "--model", path, "--data", tmp_path / "data", "--flip"], capsys)
    assert out["flip"] is True and out["top1"] == 1.0


def test_classes_are_matched_by_name_ignoring_case_underscores_and_spaces():
    from types import SimpleNamespace

    from scratchnet.layers import Conv2d, GlobalAvgPool
    from scratchnet.models import Network
    from scratchnet.models.cli import label_map
    net = Network([("conv", Conv2d(3, 3, 1)), ("gap", GlobalAvgPool())], input_shape=(3, 8, 8),
                  class_names=["Golden_Retriever", "tabby cat", "Owl"])
    ds = SimpleNamespace(num_classes=3, class_wnids=[None, None, None],
                         class_names=["tabby_cat", "golden  retriever", "frog"])
    mapping, how = label_map(net, ds)
    assert how == "name" and mapping.tolist() == [1, 0, -1]
