"""Every command's ``--device gpu`` path, end to end, on a machine without a GPU.

CuPy is replaced by tests/hostcupy.py (device arrays that refuse every implicit trip to the host,
as CuPy's do) and the kernels by the g++-built emulator of kernels/*.cu (tests/cuda_emu.py), so
the trainer, the checkpoints, the visualisers, localisation, evaluation, the demo and the GPU
benchmark run the code they run on a GPU: every array on the "device", every kernel from the .cu
sources. A NumPy array mixed into a device operation, a device array handed to NumPy, Pillow or
Numba, or a network and its input on different devices fails here as it would on the GPU. Results
are compared with the same commands on the CPU.

What this cannot check is CuPy itself (NVRTC, launches, cuBLAS, races between real threads):
tests/test_gpu.py's ``cuda`` cases and bench/run_gpu_checks.sh do that on a GPU.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import hostcupy
from clirun import run_cli
from cuda_emu import EmuBackend
from scratchnet import backend
from scratchnet.cli import main
from scratchnet.kernels import gpu
from scratchnet.models import load

HERE = Path(__file__).resolve().parent


@pytest.fixture
def host_gpu(emulator_lib, monkeypatch):
    """scratchnet sees a GPU: hostcupy arrays, kernels from the emulator, outputs poisoned."""
    monkeypatch.setattr(backend, "_cupy", hostcupy)
    hostcupy.stand_in_for_cupy(monkeypatch)               # code importing cupy itself gets the same
    monkeypatch.setenv("SCRATCHNET_POISON", "1")
    # what the test's commands and benchmarks remember for the process, put back after it: the GPU
    # check's pass (for the stand-in) and set_tf32's last choice (bench_gpu.py makes one)
    monkeypatch.setattr(backend, "_gpu_checked_for", backend._gpu_checked_for)
    monkeypatch.setattr(gpu, "_tf32_choice", gpu._tf32_choice)
    emu = EmuBackend(emulator_lib, hostcupy)
    old = gpu.use_backend(emu)
    try:
        yield emu
    finally:
        gpu.use_backend(old)


def run(argv, capsys):
    """The command's JSON; it must not have fallen back to the CPU."""
    result, err = run_cli(argv, capsys)
    assert "running on the CPU" not in err, err
    return result


def write_png(path, rng, size=24):
    from scratchnet.io.images import save_png
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, (rng.random((size, size, 3)) * 255).astype(np.uint8))
    return path


WNIDS = {"n01443537": "goldfish, Carassius auratus", "n01629819": "European fire salamander",
         "n01641577": "bullfrog, Rana catesbeiana", "n01644900": "tailed frog", "n01698640": "American alligator"}


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    """A ../shared holding a miniature Tiny-ImageNet in its real layout: 5 classes, 6 training and
    2 val photos each (32 pixels, random, each class tinted and with a bright square in its box)."""
    from PIL import Image
    shared = tmp_path_factory.mktemp("shared")
    root = shared / "data" / "tiny-imagenet-200"
    rng = np.random.default_rng(0)

    def photo(path, c):
        img = rng.random((32, 32, 3)) * 100
        img[..., c % 3] += 60
        x0, y0 = rng.integers(0, 16, 2)
        img[y0:y0 + 14, x0:x0 + 14] += 90
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(path, quality=95)
        return f"{x0}\t{y0}\t{x0 + 13}\t{y0 + 13}"

    val_lines = []
    for c, w in enumerate(WNIDS):
        boxes = [f"{w}_{i}.JPEG\t" + photo(root / "train" / w / "images" / f"{w}_{i}.JPEG", c) for i in range(6)]
        (root / "train" / w / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
        for i in range(2):
            name = f"val_{2 * c + i}.JPEG"
            val_lines.append(f"{name}\t{w}\t" + photo(root / "val" / "images" / name, c))
    (root / "val" / "val_annotations.txt").write_text("\n".join(val_lines) + "\n")
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in WNIDS.items()))
    (shared / "README.md").write_text("a miniature ../shared for tests/test_gpu_host.py\n")
    return shared


@pytest.fixture(scope="module")
def folder(shared_root):
    return shared_root / "data" / "tiny-imagenet-200"


def train_args(epochs=2):
    return ["--arch", "paper", "--input-size", "16", "--width", "0.0625", "--epochs", str(epochs), "--batch-size", "6",
            "--seed", "0", "--schedule", "piecewise", "--lr-points", "1:0.01"]


def test_train_on_the_device_equals_train_on_the_cpu_and_resumes_exactly(folder, tmp_path, host_gpu, capsys):
    """Same seed, same data: the GPU path's losses and weights are the CPU's (float32 rounding apart),
    and every kernel family ran on the device. Then one epoch on the device and --resume to two: the
    momentum and the weights come back onto the device, and the result is the straight run's, exactly.
    (One test, so that the two-epoch device run is trained once.)"""
    common = ["train", "--data", str(folder), "--cache", str(tmp_path / "cache")]
    cpu = run(common + train_args(2) + ["--device", "cpu", "--out", str(tmp_path / "cpu")], capsys)
    assert not host_gpu.launches
    dev = run(common + train_args(2) + ["--device", "gpu", "--out", str(tmp_path / "gpu")], capsys)
    assert {"im2col", "col2im_gather", "rows_to_nchw", "nchw_to_rows", "relu_fwd", "relu_bwd_gradient", "maxpool_fwd",
            "maxpool_bwd_gather", "lrn_fwd", "lrn_bwd", "softmax_xent_fwd_bwd",
            "sgd_momentum_update"} <= set(host_gpu.launches), host_gpu.launches
    assert cpu["steps"] == dev["steps"] == 10
    assert (cpu["device"], dev["device"]) == ("cpu", "gpu")           # the JSON says where it ran
    assert (cpu["numerics"], dev["numerics"]) == (backend.numerics("cpu"), backend.numerics("gpu"))   # and with what
    assert dev["numerics"].startswith("gpu-hostcupy-") and cpu["numerics"].startswith("cpu-")
    assert dev["train_loss"] == pytest.approx(cpu["train_loss"], rel=1e-4)
    assert dev["val_top1"] == cpu["val_top1"]
    a, b = load(tmp_path / "cpu" / "model.npz"), load(tmp_path / "gpu" / "model.npz")
    for (path, la, key), (_, lb, _) in zip(a.named_params(), b.named_params()):
        np.testing.assert_allclose(lb.params[key], la.params[key], rtol=1e-3, atol=1e-5, err_msg=f"{path}.{key}")

    on_gpu = common + ["--device", "gpu"]
    run(on_gpu + train_args(1) + ["--out", str(tmp_path / "b")], capsys)
    ckpt, model = load(tmp_path / "b" / "checkpoint.npz"), load(tmp_path / "b" / "model.npz")
    for (path, la, key), (_, lb, _) in zip(model.named_params(), ckpt.named_params()):   # a checkpoint is a network
        np.testing.assert_array_equal(lb.params[key], la.params[key], err_msg=f"checkpoint {path}.{key}")
    resumed = run(on_gpu + train_args(2) + ["--out", str(tmp_path / "b"), "--resume"], capsys)
    assert resumed["steps"] == dev["steps"] and resumed["epochs"] == 2
    a, b = load(tmp_path / "gpu" / "model.npz"), load(tmp_path / "b" / "model.npz")
    for (path, la, key), (_, lb, _) in zip(a.named_params(), b.named_params()):
        np.testing.assert_array_equal(lb.params[key], la.params[key], err_msg=f"resumed {path}.{key}")


# ---------------------------------------------------------------------------------------------
# the visualisers, localisation, evaluation and the demo: the same command on both devices
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """The paper's network (16 pixels, width 1/16) trained one epoch on ``folder`` on the CPU."""
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["train", "--data", str(folder), "--cache", str(out.parent / "cache"),
                 "--out", str(out)] + train_args(1)) == 0
    return out / "model.npz"


@pytest.fixture(scope="module")
def tiny_vis_net(tmp_path_factory):
    """tests/test_vis.py's tiny network: a Fire-like concat, a residual depthwise block, ReLU6, GAP."""
    from test_vis import save_tiny_net
    return save_tiny_net(tmp_path_factory.mktemp("net"))


SKIP_KEYS = ("seconds", "time", "numerics",       # numerics: the device's own arithmetic, named
             "falls", "final_steps")      # class-model step control: a float32 near-tie of two objectives
                                          # may shorten a step on one device only (the images are compared)


def assert_same_result(got, want, where="result"):
    """Two JSON results of one command on the two devices: equal, numbers to float32 rounding; the
    .npy files they name equal too; other file names and timings skipped."""
    if isinstance(want, str) and "/" in want:
        if want.endswith(".npy"):
            np.testing.assert_allclose(np.load(got), np.load(want), rtol=1e-3, atol=1e-5 * np.abs(np.load(want)).max(),
                                       err_msg=where)
        return
    if isinstance(want, dict):
        assert set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            if not any(s in k for s in SKIP_KEYS):
                assert_same_result(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{where}: {len(got)} items, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_result(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-3, abs=1e-5), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def both(argv, tmp_path, capsys, host_gpu):
    """Run a command on the CPU, then on the (emulated) GPU, each into its own --out; both results."""
    def with_out(dev):
        a = list(argv)
        if "--out" in a:
            a[a.index("--out") + 1] = str(tmp_path / dev)
        return a + ["--device", dev]
    cpu = run(with_out("cpu"), capsys)
    launched = sum(host_gpu.launches.values())
    dev = run(with_out("gpu"), capsys)
    if argv[0] != "info":                   # info computes shapes, nothing on a device
        assert sum(host_gpu.launches.values()) > launched, f"scratchnet {argv[0]} --device gpu launched no kernel"
    assert (cpu.pop("device"), dev.pop("device")) == ("cpu", "gpu")      # each JSON says where it ran
    return cpu, dev


def photos(tmp_path, n=3):
    rng = np.random.default_rng(5)
    return [str(write_png(tmp_path / "photos" / f"p{i}.png", rng, 20 + 4 * i)) for i in range(n)]


@pytest.mark.parametrize("model", ["trained", "tiny_vis_net"])
def test_visualisers_on_the_device_equal_the_cpu(model, tmp_path, host_gpu, capsys, request):
    m = str(request.getfixturevalue(model))
    ph = photos(tmp_path)
    layer = "conv2" if model == "trained" else "dw"
    for argv in (["info", "--model", m],
                 ["classify", *ph, "--model", m],
                 ["saliency", *ph, "--model", m, "--rule", "all", "--out", "x"],
                 ["saliency", ph[0], "--model", m, "--ten-crop", "--class", "1", "--out", "x"],
                 ["classmodel", "--model", m, "--class", "0", "2", "--steps", "3", "--out", "x"],
                 ["classmodel", "--model", m, "--class", "1", "--steps", "3", "--regularised", "--out", "x"],
                 ["deconv", ph[1], "--model", m, "--layer", layer, "--rule", "all", "--out", "x"],
                 ["compare-rules", ph[1], "--model", m, "--check-pixels", "4"],
                 ["localise", *ph, "--model", m, "--out", "x"],
                 ["localise", ph[2], "--model", m, "--ten-crop", "--out", "x"]):
        cpu, dev = both(argv, tmp_path / argv[0], capsys, host_gpu)
        assert_same_result(dev, cpu, f"scratchnet {' '.join(argv[:2])}")


def test_evaluate_on_the_device_equals_the_cpu(trained, folder, tmp_path, host_gpu, capsys):
    for argv in (["evaluate", "classification", "--model", str(trained), "--data", str(folder / "val"), "--flip"],
                 ["evaluate", "localisation", "--model", str(trained), "--data", str(folder), "--all-maps",
                  "--no-cache"],
                 ["evaluate", "localisation", "--model", str(trained), "--data", str(folder), "--ten-crop",
                  "--rule", "guided", "--no-cache"]):
        cpu, dev = both(argv, tmp_path, capsys, host_gpu)
        assert_same_result(dev, cpu, " ".join(argv[:2]))


def test_demo_on_the_device(tiny_vis_net, tmp_path, host_gpu, capsys):
    cpu, dev = both(["demo", "--model", str(tiny_vis_net), "--quick", "--out", "x"], tmp_path, capsys, host_gpu)
    assert dev["images"] == cpu["images"] >= 10


def test_demo_of_a_network_trained_here_on_the_device(trained, shared_root, tmp_path, host_gpu, capsys, monkeypatch):
    """A Tiny-ImageNet network: its val photos, boxes and localisation section, on the device."""
    monkeypatch.setenv("SCRATCHNET_SHARED", str(shared_root))
    cpu, dev = both(["demo", "--model", str(trained), "--quick", "--out", "x"], tmp_path, capsys, host_gpu)
    assert dev["images"] == cpu["images"] >= 10
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("cpu", "gpu")]
    assert "localisation_error" in summaries[1]["models"][str(trained)]
    assert_same_result(summaries[1], summaries[0], "summary.json")


def test_a_training_step_waits_for_the_device_twice_and_saliency_once(host_gpu):
    """Each read back from a GPU (float(a), a.get(), ...) waits for all the work queued before it, so the
    hot paths keep them few; tests/hostcupy.py counts them by file. A training step as bench_gpu.py
    times it: the input's NaN check (models/network.py) and the loss (kernels/gpu.py) come back, the two
    dropout masks (drawn on the host, layers/linear.py) go over. Saliency: the input check only."""
    from collections import Counter
    from scratchnet.layers import softmax_cross_entropy
    from scratchnet.models import paper_net
    from scratchnet.train.sgd import SGD

    def by_file():
        counts = Counter()
        for (kind, where), n in hostcupy.TRANSFERS.items():
            counts[kind, where.rsplit(":", 1)[0].split("/")[-1]] += n
        hostcupy.TRANSFERS.clear()
        return dict(counts)

    net = paper_net(32, num_classes=10, width=0.125, seed=0).to("gpu")
    opt = SGD(net, lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = hostcupy.asarray(rng.standard_normal((4, 3, 32, 32)).astype(np.float32))
    labels = hostcupy.asarray(rng.integers(0, 10, 4))
    onehot = hostcupy.zeros((4, 10), np.float32)
    onehot[hostcupy.arange(4), labels] = 1
    for _ in range(2):                  # the second step is the one counted
        by_file()
        _, d = softmax_cross_entropy(net.forward(x, train=True), labels)
        net.backward(d, input_grad=False)
        opt.step()
    assert by_file() == {("to_host", "network.py"): 1, ("to_host", "gpu.py"): 1, ("to_device", "linear.py"): 2}
    net.forward(x)
    net.backward(onehot, param_grads=False)
    assert by_file() == {("to_host", "network.py"): 1}


def test_bench_gpu_runs_on_the_emulated_device(host_gpu, capsys, monkeypatch):
    """bench/bench_gpu.py end to end at toy size, its GPU path through kernels/gpu.py and the emulated
    kernels: catches a broken benchmark before it costs GPU time. Checks the logic, not the numbers."""
    import runpy
    monkeypatch.setattr(sys, "path", list(sys.path))          # the script puts bench/ on it
    bench = runpy.run_path(str(HERE.parent / "bench" / "bench_gpu.py"))
    bench["main"].__globals__["torch_available"] = lambda: pytest.fail("bench_gpu --no-torch looked for torch")
    rc = bench["main"](["--batches", "2", "--size", "32", "--repeats", "1", "--warmup", "0",
                        "--sgemm-n", "64", "--no-torch"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["batches"]["2"]["scratchnet"]) == {"forward", "train_step", "saliency"}
    assert result["batches"]["2"]["host_dropout_masks_ms"] > 0          # paper_net's two masks, drawn on the host
    assert any("fwd_gflops" in r for r in result["layers"])
    assert [r["layer"] for r in result["conv_parts"]] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert all(r["fwd_parts_ms"] > 0 and r["bwd_parts_ms"] > 0 for r in result["conv_parts"])
    assert all(set(r["dW_by_S_ms"]) == {"1", "8", "32", "128", str(r["dW_S"])} for r in result["conv_parts"])
    assert all(max(r["dW_by_S_rel_diff"].values()) < 1e-5 for r in result["conv_parts"])
    assert {"im2col", "col2im_gather", "sgd_momentum_update", "softmax_xent_fwd_bwd",
            "cublas_gemm_strided_batched"} <= set(host_gpu.launches)


@pytest.fixture
def torch_as_cuda(monkeypatch):
    """PyTorch on the CPU dressed as CUDA (is_available, .cuda(), device="cuda", events, synchronize):
    enough for bench_gpu.py's PyTorch half to run here. Imported before host_gpu puts the stand-in in
    sys.modules["cupy"] (torch's import looks at an installed CuPy's cupyx), and so is the part that
    torch.optim imports on first use (torch._dynamo, whose custom ops call inspect.getmodule, which
    touches every module in sys.modules: a cupyx left half-loaded by an earlier test would then import
    the stand-in as its cupy and fail)."""
    torch = pytest.importorskip("torch")
    import torch._dynamo  # noqa: F401

    class Event(hostcupy._Event):        # the stand-in's host-clock event, with torch's elapsed_time
        def elapsed_time(self, end):
            return hostcupy._elapsed_ms(self, end)

    as_tensor = torch.as_tensor
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    # a CUDA build of torch would look for the GPU's compute capability here; the CPU build says None
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: None)
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch, "as_tensor", lambda a, device=None, **k: as_tensor(a, **k))
    # bench_gpu.py sets these flags; put back by hand (monkeypatch's undo, in newer pytest, deletes an
    # attribute that was not in the object's own __dict__, and these are torch's properties)
    flags = [(torch.backends.cudnn, "benchmark"), (torch.backends.cudnn, "allow_tf32"),
             (torch.backends.cuda.matmul, "allow_tf32")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in flags]
    yield torch
    for owner, name, value in saved:
        setattr(owner, name, value)


def test_bench_gpu_pytorch_half_runs(torch_as_cuda, host_gpu, capsys, monkeypatch):
    """The PyTorch (cuDNN) half of bench/bench_gpu.py, which only a GPU machine with torch reaches: run
    here with torch on the CPU posing as CUDA, beside our emulated device. Its forward check against
    ours, its three timings and the ratios come out; the TF32 switches read back off. Not in CI (no
    torch there); catches a slip in code that otherwise first runs in the one GPU call."""
    import runpy
    monkeypatch.setattr(sys, "path", list(sys.path))          # the script puts bench/ on it
    bench = runpy.run_path(str(HERE.parent / "bench" / "bench_gpu.py"))
    rc = bench["main"](["--batches", "2", "--size", "32", "--repeats", "1", "--warmup", "1", "--sgemm-n", "64"])
    assert rc == 0
    out, err = capsys.readouterr()
    print(err, file=sys.stderr)         # the benchmark's progress lines, for pytest -rP
    result = json.loads(out.strip().splitlines()[-1])
    row = result["batches"]["2"]
    assert set(row["torch"]) == set(row["ratio_ours_over_torch"]) == {"forward", "train_step", "saliency"}
    assert row["forward_rel_err_vs_torch"] < 1e-4, row["forward_rel_err_vs_torch"]
    assert result["torch_tf32_matmul_cudnn"] == [False, False]
    assert "WARNING" not in err and "time ours/torch" in out


# ---------------------------------------------------------------------------------------------
# the stand-in itself, and the network's device check
# ---------------------------------------------------------------------------------------------
def test_hostcupy_refuses_what_cupy_refuses():
    a = hostcupy.asarray(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(3, np.float32)
    with pytest.raises(TypeError, match="Unsupported type"):
        hostcupy.concatenate([a, np.ones((1, 3), np.float32)])
    with pytest.raises(TypeError, match="Unsupported type"):
        a[0] = np.zeros(3)
    b = a * np.float32(2) + 1                   # scalars are fine, results stay on the device
    b += a
    assert type(b) is hostcupy.ndarray and float(b.sum()) == 24.0
    assert type(np.sum(a, axis=0)) is hostcupy.ndarray           # NumPy functions dispatch, as with CuPy
    np.testing.assert_array_equal(hostcupy.asnumpy(b), np.full((2, 3), 4, np.float32))


def test_network_and_input_on_different_devices_is_a_clear_error(host_gpu):
    from scratchnet.models import paper_net
    net = paper_net(32, num_classes=3, width=0.125, seed=0)
    x = np.zeros((1, 3, 32, 32), np.float32)
    net.to("gpu")
    assert net.device() == "gpu"
    with pytest.raises(ValueError, match=r"input is on the cpu .* network is on the gpu.*to_device\(x, 'gpu'\)"):
        net.forward(x)
    net.to("cpu")
    assert net.device() == "cpu" and type(net.forward(x)) is np.ndarray
    with pytest.raises(ValueError, match=r"input is on the gpu .* network is on the cpu"):
        net.forward(hostcupy.asarray(x))



def test_dscores_and_dy_on_the_wrong_device_are_named(host_gpu):
    """dscores on the host for a pass on the device is named as such (not as fc8's dy); a layer's own
    dy on the wrong device too; and a network moved after its forward asks for a new forward."""
    from scratchnet.layers import ReLU, ShapeError
    from scratchnet.models import paper_net
    net = paper_net(32, num_classes=3, width=0.125, seed=0).to("gpu")
    s = net.forward(hostcupy.asarray(np.ones((1, 3, 32, 32), np.float32)))
    with pytest.raises(ShapeError, match=r"dscores is on the cpu but the last forward's scores are on the gpu: "
                                         r"move it, e.g. scratchnet.backend.to_device\(dscores, 'gpu'\)"):
        net.backward(np.ones(s.shape, np.float32))
    assert type(net.backward(hostcupy.ones(s.shape, np.float32))) is type(s)
    relu = ReLU()
    relu.forward(hostcupy.asarray(np.ones((2, 3), np.float32)))
    with pytest.raises(ShapeError, match="ReLU: dy must be on the gpu like forward's output"):
        relu.backward(np.ones((2, 3), np.float32))
    net.to("cpu")
    with pytest.raises(ShapeError, match="network backward before any forward"):
        net.backward(np.ones(s.shape, np.float32))
    bare = ReLU()                                   # a layer moved on its own forgets its forward too
    bare.forward(np.ones((2, 3), np.float32))
    bare.to("gpu")
    with pytest.raises(ShapeError, match="ReLU: backward before forward"):
        bare.backward(np.ones((2, 3), np.float32))


def test_moving_mid_training_and_host_device_mixes_that_are_plain_to_mean(host_gpu):
    """Found by a sweep on this stand-in, each a traceback from inside CuPy before: SGD's momentum stayed
    where it was made when the network moved (net.to) between steps, so the next step mixed devices; a
    gradient on the other device than its parameter; a layer used alone with its input on the other
    device; class indices on the device (a device argmax) for saliency and class_model, and a photo on
    the device for localise_image; labels on the other device than the scores; net.to("GPU")."""
    from scratchnet.layers import Linear, ShapeError
    from scratchnet.localise.network import localise_image
    from scratchnet.models import paper_net
    from scratchnet.train.sgd import SGD
    from scratchnet.vis.classmodel import class_model
    from scratchnet.vis.saliency import saliency
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 1, 2, 0])

    def step(net, opt, device):
        from scratchnet.backend import to_device
        from scratchnet.layers import softmax_cross_entropy
        _, d = softmax_cross_entropy(net.forward(to_device(x, device), train=True), to_device(y, device))
        net.backward(d, input_grad=False)
        opt.step()

    moved = paper_net(32, num_classes=3, width=0.125, seed=0, dropout=0.0)
    stay = paper_net(32, num_classes=3, width=0.125, seed=0, dropout=0.0)
    opt_moved, opt_stay = SGD(moved, lr=0.01), SGD(stay, lr=0.01)
    step(moved, opt_moved, "cpu"), step(stay, opt_stay, "cpu")
    moved.to("GPU")                                                  # any case, as --device takes it
    step(moved, opt_moved, "gpu"), step(stay, opt_stay, "cpu")
    moved.to("cpu")
    step(moved, opt_moved, "cpu"), step(stay, opt_stay, "cpu")
    assert all(type(v) is np.ndarray for v in opt_moved.velocity.values())
    for (name, a, key), (_, b, _) in zip(moved.named_params(), stay.named_params()):
        np.testing.assert_allclose(a.params[key], b.params[key], rtol=1e-4, atol=1e-6, err_msg=name)
    fc = dict(moved.named_layers())["fc8"]
    fc.grads["W"] = hostcupy.asarray(fc.grads["W"])
    with pytest.raises(ValueError, match="SGD: the gradient of fc8.W is on the gpu, the parameter on the cpu"):
        opt_moved.step()
    with pytest.raises(ShapeError, match=r"the input is on the gpu but the parameters are on the cpu: move one"):
        Linear(4, 2).forward(hostcupy.asarray(np.ones((1, 4), np.float32)))
    net = paper_net(32, num_classes=3, width=0.125, seed=0).to("gpu")
    xg = hostcupy.asarray(x)
    top = net.forward(xg).argmax(axis=1)                              # on the device
    np.testing.assert_array_equal(saliency(net, xg, classes=top).classes, hostcupy.asnumpy(top))
    assert class_model(net, hostcupy.asarray(np.array([0, 2])), steps=1).classes.tolist() == [0, 2]
    img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    a = localise_image(net, hostcupy.asarray(img), cls=hostcupy.asarray(np.array(2)))
    b = localise_image(net, img, cls=2)
    assert a["box"] == b["box"] and a["class"] == b["class"] == 2
    from scratchnet.layers import softmax_cross_entropy
    loss, _ = softmax_cross_entropy(np.zeros((2, 3), np.float32), hostcupy.asarray(np.array([0, 1])))
    assert abs(loss - np.log(3)) < 1e-6


# ---------------------------------------------------------------------------------------------
# the pretrained ImageNet networks (EfficientNet-Lite0 comes with pip; SqueezeNet from ../shared)
# ---------------------------------------------------------------------------------------------
def sample_photo(tmp_path):
    from scratchnet.io.images import save_png
    from scratchnet.vis.report import sample_photos
    _, img, _ = sample_photos(1, shared_n=0)[0]
    return str(save_png(tmp_path / "photo.png", img))


@pytest.mark.parametrize("model", ["efficientnet_lite0", pytest.param("squeezenet1_0", marks=pytest.mark.shared)])
def test_pretrained_networks_on_the_device_equal_the_cpu(model, tmp_path, host_gpu, capsys, request):
    """Depthwise convolutions, ReLU6, average pooling, LRN-free Fire modules: top-5 classes, scores
    and the saliency map of a real photo agree on the two devices."""
    if model == "squeezenet1_0":
        request.getfixturevalue("shared")
    ph = sample_photo(tmp_path)
    for argv in (["classify", ph, "--model", model],
                 ["saliency", ph, "--model", model, "--out", "x"]):
        cpu, dev = both(argv, tmp_path / argv[0], capsys, host_gpu)
        assert_same_result(dev, cpu, f"{model} {argv[0]}")


def test_demo_of_a_network_with_fewer_than_five_classes_skips_the_localisation_error(
        folder, shared_root, tmp_path, capsys, monkeypatch):
    """(CPU) The ILSVRC localisation error scores five guesses: a 3-class network's demo leaves it out
    and says why, rather than failing after all its other sections."""
    monkeypatch.setenv("SCRATCHNET_SHARED", str(shared_root))
    run(["train", "--data", str(folder), "--classes", "3", "--cache", str(tmp_path / "cache"),
         "--out", str(tmp_path / "run")] + train_args(1), capsys)
    out = run(["demo", "--model", str(tmp_path / "run" / "model.npz"), "--quick", "--out", str(tmp_path / "d")], capsys)
    (m,) = json.loads((tmp_path / "d" / "summary.json").read_text())["models"].values()
    assert "localisation_error" not in m and m["localisation"]
    assert "this one has 3 classes" in Path(out["index"]).read_text()


def test_bench_gpu_as_a_script_without_a_gpu_says_so():
    """Run as the GPU scripts run it: a clear line and exit status 2 here (not silence, not 0)."""
    import subprocess
    r = subprocess.run([sys.executable, str(HERE.parent / "bench" / "bench_gpu.py")], capture_output=True,
                       text=True, check=False, env={**hostcupy.env_without_emulation(),
                                                    "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 2 and "no usable GPU" in r.stderr, (r.returncode, r.stderr[-2000:])


def test_the_environment_variable_picks_the_device(tiny_vis_net, tmp_path, host_gpu, capsys, monkeypatch):
    """SCRATCHNET_DEVICE=gpu without --device: the command runs on the device; --device cpu overrides it."""
    ph = photos(tmp_path, 1)
    monkeypatch.setenv("SCRATCHNET_DEVICE", "gpu")
    run(["saliency", *ph, "--model", str(tiny_vis_net), "--out", str(tmp_path / "a")], capsys)
    launched = sum(host_gpu.launches.values())
    assert launched > 0
    run(["saliency", *ph, "--model", str(tiny_vis_net), "--out", str(tmp_path / "b"), "--device", "cpu"], capsys)
    assert sum(host_gpu.launches.values()) == launched
    monkeypatch.setenv("SCRATCHNET_DEVICE", "")                    # empty is unset: the CPU
    run(["saliency", *ph, "--model", str(tiny_vis_net), "--out", str(tmp_path / "c")], capsys)
    assert sum(host_gpu.launches.values()) == launched
    monkeypatch.setenv("SCRATCHNET_DEVICE", "tpu")
    assert main(["info", "--model", str(tiny_vis_net)]) == 2
    assert "got 'tpu' (from $SCRATCHNET_DEVICE)" in capsys.readouterr().err



def test_maps_cached_on_one_device_are_not_read_back_on_the_other(tiny_vis_net, tmp_path, host_gpu, monkeypatch):
    """A map computed on the GPU (cuBLAS's sums, TF32 or not) differs in its last bits from the CPU's:
    the map cache keeps the two apart (and TF32 from float32), as it keeps OpenBLAS's settings apart."""
    from scratchnet.localise.cli import MapCache
    entry = {"scores": np.arange(3, dtype=np.float32), "classes": [1], "maps": np.ones((1, 5, 5), np.float32)}
    net = load(tiny_vis_net)

    def cache():
        return MapCache(tmp_path / "cache", net, "tiny", False, "gradient", tmp_path / "photos")
    cache().put("p", entry)
    assert cache().get("p", (5, 5), [1]) is not None
    cpu_folder = cache().folder
    net.to("gpu")
    assert cache().get("p", (5, 5), [1]) is None and cache().folder.parent.name.endswith("-fp32")
    cache().put("p", entry)
    assert cache().get("p", (5, 5), [1]) is not None
    monkeypatch.setattr(gpu, "_tf32_choice", True)                  # as set_tf32(True) leaves it
    assert cache().get("p", (5, 5), [1]) is None and cache().folder.parent.name.endswith("-cublas0-tf32")
    assert len({cpu_folder, cache().folder}) == 2 and "-gpu-hostcupy-" in cache().folder.parent.name
    monkeypatch.setattr(gpu, "_tf32_choice", None)
    monkeypatch.setenv("CUPY_TF32", "1")                             # CuPy's own switch (its 2-D matmuls)
    assert cache().folder.parent.name.endswith("-tf32")


def test_the_cupy_backend_itself_on_emulated_raw_modules(emulator_lib, monkeypatch):
    """kernels/gpu.py's CupyBackend (RawModule per .cu file, kernels by name expression), which the
    tests above replace, here run on hostcupy's emulated RawModule (as tests/emu_site does for the
    GPU scripts' rehearsal): every kernel it can be asked for resolves and runs."""
    monkeypatch.setattr(backend, "_cupy", hostcupy)
    hostcupy.stand_in_for_cupy(monkeypatch)
    monkeypatch.setattr(hostcupy, "RawModule", None, raising=False)      # undone after the test
    hostcupy.install_emulated_raw_module()
    old = gpu.use_backend(None)                 # the CuPy backend, made on first use
    try:
        b = gpu.backend()
        assert type(b).__name__ == "CupyBackend"
        for filename, names in gpu.KERNELS.items():
            for name in names:
                for dtype in (np.float32, np.float64):
                    b.kernel(name, np.dtype(dtype))
        assert len(b._modules) == len(gpu.KERNELS)
        from scratchnet import kernels
        x = hostcupy.asarray(np.array([-1.0, 2.0, 7.0], np.float32))
        np.testing.assert_array_equal(kernels.relu_forward(x, 6.0).get(), [0.0, 2.0, 6.0])
    finally:
        gpu.use_backend(old)


def test_gradcheck_on_the_device(host_gpu, capsys):
    """`scratchnet gradcheck --device gpu`: the backward kernels of kernels/*.cu (emulated here), in
    double, against central differences: the whole layer grid and the paper network."""
    from scratchnet.gradcheck import LAYER_GRID
    out = run(["gradcheck", "--device", "gpu", "--pixels", "8", "--entries", "2"], capsys)
    assert out["device"] == "gpu" and out["failed"] == [] and out["network"]["ok"]
    assert len(out["layers"]) == len(LAYER_GRID)
    assert {"relu_bwd_gradient", "maxpool_bwd_gather", "avgpool_bwd_gather", "lrn_bwd", "col2im_gather"} <= set(
        host_gpu.launches), host_gpu.launches


def test_every_cupy_name_reached_exists_in_real_cupy(real_cupy):
    """hostcupy forwards any NumPy name, so a NumPy-only function or array method would pass the tests
    above and fail on a GPU. Every name they reached (recorded in hostcupy.USED; this test runs after
    them, in file order) must exist in a real CuPy, where one is installed (CI installs CuPy 14 through
    the kernel-check extra; no GPU is needed to look names up)."""
    if "cupy.matmul" not in hostcupy.USED:
        pytest.skip("no network ran on the stand-in before this test in this session (run the whole file)")
    cupy = real_cupy
    missing = sorted(u for u in hostcupy.USED if not hostcupy.real_cupy_has(cupy, u))
    print(f"{len(hostcupy.USED)} CuPy names reached, all in CuPy {cupy.__version__}: {sorted(hostcupy.USED)}")
    assert not missing, f"used on device arrays, absent from CuPy {cupy.__version__}: {missing}"
    assert {"cupy.matmul", "ndarray.reshape"} <= set(hostcupy.USED), sorted(hostcupy.USED)  # the record is live


def test_each_relu_rule_launches_its_own_named_kernel(host_gpu):
    """A profile names the rule that ran: rule code k launches gpu.RELU_BWD[k] and nothing else,
    and gives the CPU's bits."""
    from scratchnet import kernels
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 50)), rng.standard_normal((2, 50))
    y = kernels.relu_forward(x, 6.0)
    y_d = kernels.relu_forward(hostcupy.asarray(x), 6.0)
    for code, name in enumerate(gpu.RELU_BWD):
        before = dict(host_gpu.launches)
        dx_d = kernels.relu_backward(hostcupy.asarray(dy), y_d, code, 6.0)
        ran = {k: v - before.get(k, 0) for k, v in host_gpu.launches.items() if v != before.get(k, 0)}
        assert ran == {name: 1}, (code, ran)
        np.testing.assert_array_equal(dx_d.get(), kernels.relu_backward(dy, y, code, 6.0))


def _sanitize_kernels():
    import runpy
    return runpy.run_path(str(HERE.parent / "bench" / "sanitize_kernels.py"))


def test_the_sanitizer_driver_launches_every_kernel_in_both_types(host_gpu, capsys):
    """bench/sanitize_kernels.py (what compute-sanitizer watches on a GPU) launches each kernel of
    kernels/gpu.py's list in float and double, and the dW slices' strided-batched GEMM; it puts the
    launch function and the backend's GEMM back afterwards."""
    launch, gemm = gpu._launch, host_gpu.gemm_strided_batched
    assert _sanitize_kernels()["main"]([]) == 0
    out = capsys.readouterr().out
    assert "all 34 kernels launched" in out, out
    table = out[out.index("kernel "):].splitlines()[1:-1]           # its header to the last line
    rows = {line.split()[0]: line.split()[1:] for line in table}
    assert set(rows) == {k for names in gpu.KERNELS.values() for k in names} | {"gemm_strided_batched"}
    assert all(int(n) > 0 for counts in rows.values() for n in counts), rows
    assert gpu._launch is launch and host_gpu.gemm_strided_batched == gemm


def test_the_sanitizer_driver_names_a_kernel_it_never_launched(host_gpu, capsys):
    """A layer list that has fallen behind the kernels fails, naming what went unchecked."""
    driver = _sanitize_kernels()
    every = driver["layers"]
    driver["main"].__globals__["layers"] = lambda: [t for t in every() if not t[0].startswith("avgpool")]
    assert driver["main"]([]) == 1
    err = capsys.readouterr().err
    assert "never launched: avgpool_fwd<float>, avgpool_fwd<double>, avgpool_bwd_gather<float>, " \
           "avgpool_bwd_gather<double> (add a layer" in err, err


def _run_gpu_sanitize(tmp_path, **env):
    """bench/run_gpu_sanitize.sh on the emulated device with the stand-in sanitizer of tests/emu_site."""
    import os
    import subprocess
    env = {**os.environ, "SCRATCHNET_EMULATE_GPU": "1", "PYTHONPATH": str(HERE / "emu_site"),
           "SANITIZER": str(HERE / "emu_site" / "compute-sanitizer"), "OUT": str(tmp_path),
           "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(HERE.parent / "bench" / "run_gpu_sanitize.sh")], capture_output=True,
                          text=True, env=env, check=False, timeout=300)


def test_run_gpu_sanitize_reports_each_tool_and_what_it_found(tmp_path):
    """bench/run_gpu_sanitize.sh end to end: each tool gets its options, and a tool that reports an
    error fails the script and its report is shown."""
    r = _run_gpu_sanitize(tmp_path, FAKE_SANITIZER_FINDS="racecheck")
    out = r.stdout
    assert r.returncode == 1, (r.returncode, out, r.stderr[-2000:])
    assert re.search(r"run_gpu_sanitize: without the sanitizer exit 0 in \d+ s: sanitize_kernels: all 34", out), out
    assert re.search(r"run_gpu_sanitize: memcheck exit 0 in \d+ s: ERROR SUMMARY: 0 errors", out), out
    assert re.search(r"run_gpu_sanitize: racecheck exit 9 in \d+ s: ERROR SUMMARY: 1 error", out), out
    assert "racecheck: =========     at void relu_fwd<float>" in out, out
    assert out.rstrip().splitlines()[-1].startswith("run_gpu_sanitize: found something or failed in: racecheck;")
    assert "all 34 kernels launched" in (tmp_path / "memcheck.log").read_text()
    # what each tool was given (the stand-in's first line): racecheck and synccheck are held to our
    # kernels by name, memcheck alone is told to leave CUDA API errors out, and none counts the
    # program's exit status as one of its errors
    given = {t: (tmp_path / f"{t}.log").read_text().splitlines()[0]
             for t in ("memcheck", "racecheck", "synccheck", "initcheck")}
    assert all("--check-exit-code no --error-exitcode 9" in g for g in given.values()), given
    for t in ("racecheck", "synccheck"):
        assert "--kernel-name kns=relu_fwd" in given[t] and "--kernel-name kns=softmax_xent_fwd_bwd" in given[t], given
    assert "--report-api-errors no" in given["memcheck"] and "--kernel-name" not in given["memcheck"], given
    assert "--kernel-name" not in given["initcheck"] and "--report-api-errors" not in given["initcheck"], given


def test_run_gpu_sanitize_runs_no_tool_when_a_kernel_never_launched(tmp_path):
    """The run without the sanitizer must pass: a kernel it never launched (exit 1) stops the script."""
    fake = tmp_path / "py"
    fake.write_text(f'#!/bin/sh\ncase "$*" in *sanitize_kernels.py*) echo "sanitize_kernels: never launched: x<float>";'
                    f' exit 1;; esac\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    r = _run_gpu_sanitize(tmp_path, PYTHON=str(fake))
    assert r.returncode == 1 and "without the sanitizer exit 1" in r.stdout, r.stdout
    assert "no tool run" in r.stdout and not (tmp_path / "memcheck.log").exists(), r.stdout


@pytest.mark.parametrize("left, tools", [(169, ""), (170, "memcheck"), (300, "memcheck racecheck initcheck"),
                                         (500, "memcheck racecheck initcheck synccheck")])
def test_run_gpu_all_fits_as_many_sanitizer_tools_as_time_allows(left, tools):
    """Part 3 of bench/run_gpu_all.sh: 70 s kept for TF32, 50 s for the run without the sanitizer and
    the start-up, 50 s (45 + the kill's 5) a tool, the most telling first."""
    import subprocess
    script = (HERE.parent / "bench" / "run_gpu_all.sh").read_text()
    part = script[script.index("san_rc=skipped"):script.index('    say "3. compute-sanitizer:')]
    r = subprocess.run(["bash", "-c", f"left() {{ echo {left}; }}\n{part}fi\necho \"${{TOOLS:-}}\""],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == tools, (left, r.stdout, r.stderr)


def test_the_sanitizer_driver_names_a_kernel_launched_in_float_only(host_gpu, capsys):
    """Each kernel must run in both element types: one launched in float only is named."""
    driver = _sanitize_kernels()
    main, every, exercise = driver["main"], driver["layers"], driver["exercise"]
    g = main.__globals__

    def exercise_without_double_avgpool(dtype, rng, say=print):
        g["layers"] = every if dtype == np.float32 else (
            lambda: [t for t in every() if not t[0].startswith("avgpool")])
        return exercise(dtype, rng, say)
    g["exercise"] = exercise_without_double_avgpool
    assert main([]) == 1
    err = capsys.readouterr().err
    assert "never launched: avgpool_fwd<double>, avgpool_bwd_gather<double> (add" in err, err


def test_the_sanitizer_driver_switches_off_the_pool_and_cub(host_gpu, monkeypatch):
    """CuPy's memory pool off (unless --keep-pool) and its reductions off CUB, before any launch."""
    import types
    calls = []
    monkeypatch.setattr(gpu.backend().xp.cuda, "set_allocator", lambda a=None: calls.append(("allocator", a)))
    acc = types.ModuleType("cupy._core._accelerator")
    acc.set_reduction_accelerators = lambda v: calls.append(("reduction", v))
    acc.set_routine_accelerators = lambda v: calls.append(("routine", v))
    core = types.ModuleType("cupy._core")
    core._accelerator = acc
    monkeypatch.setitem(sys.modules, "cupy._core", core)
    monkeypatch.setitem(sys.modules, "cupy._core._accelerator", acc)
    main = _sanitize_kernels()["main"]
    assert main([]) == 0
    assert calls == [("allocator", None), ("reduction", []), ("routine", [])], calls
    calls.clear()
    assert main(["--keep-pool"]) == 0
    assert calls == [("reduction", []), ("routine", [])], calls


def test_run_gpu_sanitize_runs_no_tool_when_the_program_fails_without_it(tmp_path):
    """No GPU (no emulation either): the run without the sanitizer says so, and no tool runs."""
    r = _run_gpu_sanitize(tmp_path, SCRATCHNET_EMULATE_GPU="0", CUDA_VISIBLE_DEVICES="")   # emu_site acts on "1" only
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr[-2000:])
    assert re.search(r"without the sanitizer exit 2 in \d+ s", r.stdout), r.stdout
    assert "plain: sanitize_kernels: needs a GPU" in r.stdout, r.stdout
    assert "no tool run" in r.stdout and not (tmp_path / "memcheck.log").exists(), r.stdout


def test_the_rehearsals_tf32_switches_record_what_set_tf32_asks():
    """tests/emu_site gives the rehearsal CuPy's private TF32 switches (recording, changing nothing), so
    that bench_gpu.py --tf32 runs its whole path there."""
    import os
    import subprocess
    code = ("import cupy, hostcupy; from scratchnet.kernels import gpu; gpu.set_tf32(True); a = dict(hostcupy.TF32); "
            "gpu.set_tf32(False); print(a, hostcupy.TF32)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                       env={**os.environ, "SCRATCHNET_EMULATE_GPU": "1", "PYTHONPATH": str(HERE / "emu_site")})
    assert r.stdout.strip() == "{'compute_type': 7, 'math_mode': 3} {'compute_type': 1, 'math_mode': 0}", \
        (r.stdout, r.stderr[-2000:])


@pytest.mark.parametrize("args", [["--tool", "racecheck", "--report-api-errors", "no"],
                                  ["--tool", "memcheck", "--kernel-name", "relu_fwd"],
                                  ["--tool", "memcheck", "--check-exit-code", "off"],
                                  ["--tool", "memchek"], ["--tool", "memcheck", "--report-api-error", "no"]])
def test_the_stand_in_sanitizer_refuses_what_the_real_one_would(args):
    """A misspelt option or value in bench/run_gpu_sanitize.sh fails the rehearsal, not the GPU run."""
    import subprocess
    r = subprocess.run([str(HERE / "emu_site" / "compute-sanitizer"), *args, "true"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 255 and "stand-in:" in r.stderr, (r.returncode, r.stderr)
