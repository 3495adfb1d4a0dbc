# Sourced by the bench/run_gpu_*.sh scripts (from the repository root, with $PY set):
# make scratchnet importable on a bare GPU machine. scratchnet.kernels is the top-level kernels/
# folder, mapped there by the install; without network or a new enough setuptools for an editable
# install, put kernels/ where that mapping would, as a link inside this (throwaway) checkout
# (ignored by git: /scratchnet/kernels), and let Python find ./scratchnet first.
# $1: where the install log goes.
if ! $PY -c "import scratchnet.kernels.gpu" 2>/dev/null; then
    $PY -m pip install -q --no-deps --no-build-isolation -e . >"$1" 2>&1
fi
if ! $PY -c "import scratchnet.kernels.gpu" 2>/dev/null; then
    ln -sfn "$PWD/kernels" "$PWD/scratchnet/kernels"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
