# Sourced by the bench/run_gpu_*.sh scripts (from the repository root, with $PY set):
# make scratchnet importable on a bare GPU machine. scratchnet.kernels is the top-level kernels/
# folder, mapped there by the install; without network or a new enough setuptools for an editable
# install, put kernels/ where that mapping would, as a link inside this (throwaway) checkout
# (ignored by git: /scratchnet/kernels), and let Python find ./scratchnet first.
# $1: where the install log goes. Also defines gpu_info: the GPU, driver and library versions.
if ! $PY -c "import scratchnet.kernels.gpu" 2>/dev/null; then
    $PY -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >"$1" 2>&1
fi
if ! $PY -c "import scratchnet.kernels.gpu" 2>/dev/null; then
    ln -sfn "$PWD/kernels" "$PWD/scratchnet/kernels"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

gpu_info() {    # the GPU and the versions the run used, for the top of each script's report
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    else
        echo "no nvidia-smi"
    fi
    $PY -c "import cupy, numpy, numba; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())" 2>&1 | tail -n 1
}
