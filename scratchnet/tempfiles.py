"""Temporary files of the atomic writes, and their removal after a crash.

Every write that must never leave half a file (networks, checkpoints, the decode cache, the map cache)
goes to a temporary file beside its target, which is then renamed over the target. A process killed
between the two (SIGKILL, the OOM killer, a power cut) leaves the temporary behind: nothing reads it,
but it holds disk, up to a whole checkpoint or a decoded data set. So temporaries are named

    .<target name>.<host>.<pid>.<tag>.tmp<suffix>

and the next write of the same target (for a cache: the next run that opens its folder) removes those
left by a process of this host that is gone; one that a live process (or another host, on a shared
folder) is writing is left alone.
"""
from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temp_prefix(target) -> str:
    """The start of the temporaries' names of ``target`` written by this process: a tag, then
    ``.tmp`` and any suffix, follow."""
    return f".{Path(target).name}.{_HOST}.{os.getpid()}."


def temp_path(target, suffix: str = "", tag: str | None = None) -> Path:
    """A temporary file's path for ``target``, in its folder: hidden, naming this host and process.
    ``tag`` (default: the calling thread's id) keeps two writers of one process apart."""
    tag = str(threading.get_ident()) if tag is None else tag
    return Path(target).with_name(f"{temp_prefix(target)}{tag}.tmp{suffix}")


def remove_stale_temps(folder, target: str | None = None) -> int:
    """Delete the temporaries in ``folder`` (of the file named ``target`` only, if given) left by
    processes of this host that have ended; returns how many were removed. Reads the folder once (a
    cache calls it once, not per file); never raises: what cannot be removed is left for the next time."""
    pattern = re.compile(rf"\.(?P<target>.+)\.{re.escape(_HOST)}\.(?P<pid>\d+)\.[^.]+\.tmp")
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        m = pattern.match(e.name)
        if m is None or (target is not None and m["target"] != target) or _alive(int(m["pid"])):
            continue
        try:
            os.unlink(e.path)
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (True where that cannot be told: not POSIX)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":          # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                 # PermissionError: another user's live process
        return True
    return True
