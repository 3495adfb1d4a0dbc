"""Run the command line in-process, as the CLI tests do, and the benchmarks in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_cli(argv, capsys):
    """``scratchnet ARGV`` through ``scratchnet.cli.main``; returns (the JSON object its last stdout line
    holds, its stderr). Fails the test, with stderr's tail, when the command exits non-zero."""
    from scratchnet.cli import main
    argv = [str(a) for a in argv]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, f"scratchnet {' '.join(argv)} exited {rc}:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1]), err


def run_bench(script, *args, timeout=300):
    """``python bench/SCRIPT ARGS`` in a fresh process (a bench sets its thread pools up before NumPy
    loads); returns the CompletedProcess, its stdout and stderr captured as text."""
    return subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def bench_json(p):
    """The JSON object on the last stdout line of a bench run that exited 0 (else the test fails with its stderr)."""
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])
