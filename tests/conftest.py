"""Shared fixtures. Tests that need ../shared (real photos, weights, Tiny-ImageNet) ask for
the `shared` fixture and are skipped with a clear message when it is absent."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scratchnet.io.shared import shared_dir

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_dir()       # $SCRATCHNET_SHARED, else ../shared (scratchnet/io/shared.py)


#: the user's settings that change what a command does by default; a test that wants one sets it itself
USER_SETTINGS = ("SCRATCHNET_CACHE", "SCRATCHNET_DEVICE", "SCRATCHNET_IMPORT", "SCRATCHNET_TF32")


@pytest.fixture(autouse=True)
def _no_user_settings(monkeypatch):
    """A test sees none of USER_SETTINGS from the shell that started pytest: with SCRATCHNET_CACHE set,
    a training test without --cache wrote its data cache into the user's folder, and left it there."""
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "README.md").exists():
        pytest.skip(f"needs the shared data folder at {SHARED} (set SCRATCHNET_SHARED); absent here")
    return SHARED


@pytest.fixture(scope="session")
def emulator_lib():
    """kernels/*.cu built with g++ for the host (tests/cuda_emu.py; one build per source text, shared
    with tests/hostcupy.py's RawModule); skips without g++."""
    import cuda_emu
    lib = cuda_emu.build()
    if lib is None:
        pytest.skip("the emulated device needs g++; not on PATH here")
    return lib


@pytest.fixture
def real_cupy():
    """The installed CuPy, to look at (its API, its compiler; no GPU needed), or a skip: CuPy is not
    installed (CI installs it: the kernel-check extra), or tests/hostcupy.py stands in for it in this
    process (the tests/emu_site rehearsal)."""
    import sys
    cupy = sys.modules.get("cupy")
    if cupy is None:
        try:
            import cupy
        except Exception as e:
            pytest.skip(f"needs a real CuPy (pip install -e '.[kernel-check]'): {type(e).__name__}: {e}")
    if getattr(cupy, "__version__", "").endswith("-host"):
        pytest.skip("cupy is tests/hostcupy.py in this process (tests/emu_site)")
    return cupy


@pytest.fixture
def rng():
    return np.random.default_rng(0)
