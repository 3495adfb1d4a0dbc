"""Run the command line in-process, as the CLI tests do."""
from __future__ import annotations

import json


def run_cli(argv, capsys):
    """``scratchnet ARGV`` through ``scratchnet.cli.main``; returns (the JSON object its last stdout line
    holds, its stderr). Fails the test, with stderr's tail, when the command exits non-zero."""
    from scratchnet.cli import main
    argv = [str(a) for a in argv]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, f"scratchnet {' '.join(argv)} exited {rc}:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1]), err
