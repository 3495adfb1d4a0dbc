"""Every CUDA kernel source compiles, free of warnings, as CuPy will compile it at run time.

No GPU is needed: this runs wherever the CUDA compiler is installed (skipped where it is not).

* nvcc: each .cu file, with common.cuh prepended exactly as ``kernels/gpu.py`` does, and the
  address of every instantiation gpu.py asks NVRTC for (``relu_fwd<float>``, ...), so the templates
  are instantiated as at run time. ``nvcc --ptx -arch=sm_90 --Werror all-warnings`` with gpu.py's
  NVRTC options and CuPy's ``-ftz=true``, then ``ptxas -arch=sm_90 -Werror`` with register spills
  and local-memory use reported (as errors). The PTX must hold one entry point per instantiation.
* NVRTC itself, where libnvrtc can be found (set SCRATCHNET_NVRTC=/path/to/libnvrtc.so to point at
  one): the exact source text, options (gpu.NVRTC_OPTIONS plus what CuPy adds) and name expressions
  of ``cupy.RawModule``; every name expression must resolve to a kernel.
* CuPy's own NVRTC wrapper, where a real CuPy is installed (no GPU needed; CI installs CuPy 14 and
  NVIDIA's NVRTC wheel through the ``kernel-check`` extra): the options RawModule would assemble
  (include paths, -ftz=true, the sm_90 arch, ...), compiled to a cubin by ``_NVRTCProgram``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scratchnet.kernels import gpu

NVCC = shutil.which("nvcc")
ARCH = "sm_90"                                # Hopper (H100 / H200), the machines the GPU runs use
#: what cupy.RawModule adds after our options when it compiles with NVRTC (cupy/cuda/compiler.py),
#: in its order (and --pch where CUPY_NVRTC_USE_PCH=1)
CUPY_EXTRA_OPTIONS = ("-ftz=true", f"-arch={ARCH}", "--device-as-default-execution-space")

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc (the CUDA compiler); not on PATH here")


def _mangled(name: str, ctype: str) -> str:
    """The Itanium-mangled prefix of ``name<ctype>``, e.g. _Z8relu_fwdIfE."""
    return f"_Z{len(name)}{name}I{dict(float='f', double='d')[ctype]}E"


def _assert_lowered(lowered: dict):
    """Each name expression ("relu_fwd<float>") lowered to its kernel's mangled name."""
    for e, low in lowered.items():
        name, ctype = e[:-1].split("<")
        assert low.startswith(_mangled(name, ctype)), f"{e} lowered to {low}"


def test_every_kernel_source_is_listed():
    """gpu.KERNELS names every .cu file beside it, and every kernel template each file defines."""
    on_disk = sorted(p.name for p in gpu.HERE.glob("*.cu"))
    assert on_disk == sorted(gpu.KERNELS), "kernels/*.cu and gpu.KERNELS disagree"
    for filename, names in gpu.KERNELS.items():
        text = (gpu.HERE / filename).read_text()
        defined = re.findall(r"__global__\s+void\s+(\w+)\s*\(", text)
        assert sorted(defined) == sorted(names), f"{filename}: defines {defined}, gpu.KERNELS lists {names}"


@needs_nvcc
@pytest.mark.parametrize("filename", sorted(gpu.KERNELS))
def test_nvcc_compiles_without_warnings(filename, tmp_path):
    exprs = gpu.name_expressions(filename)
    wrapper = tmp_path / f"wrap_{filename}"
    wrapper.write_text(gpu.kernel_source(filename)
                       + "\n// instantiate what gpu.py asks NVRTC for\n"
                       + "void* scratchnet_instances[] = {" + ", ".join(f"(void*)&{e}" for e in exprs) + "};\n")
    ptx = tmp_path / (filename + ".ptx")
    cmd = [NVCC, *gpu.NVRTC_OPTIONS, "-ftz=true", f"-arch={ARCH}", "--ptx",
           "--Werror", "all-warnings", "-o", str(ptx), str(wrapper)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"

    entries = re.findall(r"\.entry\s+(\w+)\(", ptx.read_text())
    assert len(entries) == len(exprs), f"{filename}: expected {len(exprs)} entry points, PTX has {entries}"
    for e in exprs:
        name, ctype = e[:-1].split("<")
        assert any(x.startswith(_mangled(name, ctype)) for x in entries), f"{e} missing from the PTX: {entries}"

    ptxas = shutil.which("ptxas") or str(Path(NVCC).with_name("ptxas"))
    cmd = [ptxas, f"-arch={ARCH}", "-warn-spills", "-warn-lmem-usage", "-Werror",
           "-o", str(tmp_path / (filename + ".cubin")), str(ptx)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"


# ---------------------------------------------------------------------------------------------
# NVRTC, as cupy.RawModule calls it
# ---------------------------------------------------------------------------------------------
def _find_nvrtc():
    """A loadable libnvrtc: $SCRATCHNET_NVRTC, the CUDA toolkit, or a pip wheel (nvidia-cuda-nvrtc)."""
    candidates = [os.environ.get("SCRATCHNET_NVRTC"), ctypes.util.find_library("nvrtc")]
    cuda = Path(NVCC).resolve().parents[1] if NVCC else Path("/usr/local/cuda")
    candidates += sorted(glob.glob(str(cuda / "lib64" / "libnvrtc.so*")), reverse=True)
    for site in sys.path:
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so*")), reverse=True)
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")), reverse=True)
    for c in candidates:
        if c and "builtins" not in c:
            try:
                return ctypes.CDLL(c)
            except OSError:
                continue
    return None


def _nvrtc_compile(lib, source, name, options, name_expressions):
    """Compile with NVRTC; returns (ok, log, {name expression: lowered name})."""
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None) == 0
    try:
        for e in name_expressions:
            assert lib.nvrtcAddNameExpression(prog, e.encode()) == 0
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        lowered = {}
        if status == 0:
            for e in name_expressions:
                out = ctypes.c_char_p()
                if lib.nvrtcGetLoweredName(prog, e.encode(), ctypes.byref(out)) == 0:
                    lowered[e] = out.value.decode()
        return status == 0, log.value.decode(errors="replace"), lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.parametrize("filename", sorted(gpu.KERNELS))
def test_nvrtc_compiles_as_cupy_will(filename):
    lib = _find_nvrtc()
    if lib is None:
        pytest.skip("needs libnvrtc (CUDA toolkit lib64 or the nvidia-cuda-nvrtc wheel; "
                    "or set SCRATCHNET_NVRTC); not found here")
    exprs = gpu.name_expressions(filename)
    options = (*gpu.NVRTC_OPTIONS, *CUPY_EXTRA_OPTIONS)
    ok, log, lowered = _nvrtc_compile(lib, gpu.kernel_source(filename), filename, options, exprs)
    assert ok, f"NVRTC failed on {filename} with {options}:\n{log}"
    assert "warning" not in log.lower(), f"NVRTC warnings on {filename}:\n{log}"
    assert sorted(lowered) == sorted(exprs), f"unresolved name expressions: {sorted(set(exprs) - set(lowered))}"
    _assert_lowered(lowered)


# ---------------------------------------------------------------------------------------------
# NVRTC through CuPy's own compiler (no GPU needed: CuPy imports without one)
# ---------------------------------------------------------------------------------------------
def _cupy_compiler(cupy):
    """(cupy.cuda.compiler, NVRTC's version) of a real CuPy whose NVRTC loads, or a skip saying why not."""
    from cupy.cuda import compiler
    try:
        return compiler, compiler._get_nvrtc_version()
    except Exception as e:
        pytest.skip(f"CuPy {cupy.__version__} finds no NVRTC (pip install nvidia-cuda-nvrtc-cu12): "
                    f"{str(e).splitlines()[0]}")


def _cupy_options(cupy, compiler, version):
    """The options cupy.RawModule hands NVRTC for gpu.py's modules on an sm_90 GPU, in CuPy 14's
    order: assemble_cupy_compiler_options (CuPy's and CCCL's include paths, the CUDA headers' path,
    our -std=c++17), then _compile_with_cache_cuda's -ftz=true, then _compile_using_nvrtc_no_warning's
    arch, --device-as-default-execution-space, and --pch where NVRTC >= 12.8 and CUPY_NVRTC_USE_PCH=1
    (off by default)."""
    try:
        options = tuple(cupy._core.core.assemble_cupy_compiler_options(gpu.NVRTC_OPTIONS))
    except RuntimeError as e:           # "Failed to auto-detect CUDA root directory": RawModule fails too
        pytest.skip(f"CuPy finds no CUDA headers here (a CUDA toolkit, or the nvidia-cuda-runtime wheel): {e}")
    options += CUPY_EXTRA_OPTIONS
    if (version[0] >= 13 or version >= (12, 8)) and getattr(compiler, "_use_pch", False):
        options += ("--pch",)
    return options


@pytest.mark.parametrize("filename", sorted(gpu.KERNELS))
def test_cupy_own_nvrtc_program_compiles_every_kernel(filename, real_cupy):
    """The exact path of ``cupy.RawModule(code=..., options=..., name_expressions=...)`` short of
    loading the binary (which needs the GPU): CuPy's NVRTC program class, CuPy's options, gpu.py's
    source text and name expressions; an sm_90 cubin results and every expression maps to a kernel
    of the right template argument."""
    compiler, version = _cupy_compiler(real_cupy)
    exprs = gpu.name_expressions(filename)
    options = _cupy_options(real_cupy, compiler, version)
    prog = compiler._NVRTCProgram(gpu.kernel_source(filename), filename, name_expressions=exprs, method="cubin")
    log = io.StringIO()
    cubin, mapping = prog.compile(options, log)
    assert cubin[:4] == b"\x7fELF", f"{filename}: NVRTC {version} did not give an ELF cubin"
    lines = log.getvalue().splitlines()
    if "--pch" in options:              # our #line turns PCH off (nothing to precompile: no #include)
        lines = [ln for ln in lines if "#20283-D: PCH creation disabled because #line" not in ln
                 and not ln.startswith("Remark: The warnings can be suppressed")]
    warnings = [ln for ln in lines if "warning" in ln.lower()]
    assert not warnings, log.getvalue()
    assert sorted(mapping) == sorted(exprs)
    _assert_lowered(mapping)


def test_cupy_raw_module_accepts_gpu_py_arguments(real_cupy):
    """cupy.RawModule takes gpu.py's keyword arguments (compiling waits for the first kernel asked)."""
    for filename in gpu.KERNELS:
        mod = real_cupy.RawModule(code=gpu.kernel_source(filename), options=gpu.NVRTC_OPTIONS,
                             name_expressions=gpu.name_expressions(filename))
        assert list(mod.name_expressions) == gpu.name_expressions(filename)
