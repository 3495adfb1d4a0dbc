"""Atomic writes (a temporary file beside the target, renamed over it), and removing the temporaries
a crash left.

Every write that must never leave half a file (networks, checkpoints, the decode and map caches, the
commands' images and JSON files) goes to a temporary file beside its target, then is renamed over the
target. A process killed between the two (SIGKILL, the OOM killer, a power cut) leaves the temporary
behind: nothing reads it, but it holds disk, up to a whole checkpoint or a decoded data set. So the
temporaries are named

    .<target name>.<host>.<pid>.<tag>.tmp<suffix>

and their writer holds an exclusive flock on each while it writes. A process's first write into a
folder (and each run that opens a cache) removes the temporaries there of this host whose lock is free,
whose process is gone and which are a second old or more. The lock is what tells a live writer: a pid
is not enough where processes share a host name but not their pids (containers). A temporary naming
this process's own pid but older than this process was left by an earlier one that had the same pid
(in a container every run may be PID 1). Without flock (not POSIX) nothing is removed.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:         # not POSIX: no locks, and no removal
    fcntl = None

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_STARTED = time.time()      # this process started before: its own temporaries are newer
_TEMP_NAME = re.compile(rf"\.(?P<target>.+)\.{re.escape(_HOST)}\.(?P<pid>\d+)\.[^.]+\.tmp")   # this host's


def temp_prefix(target) -> str:
    """The start of the temporaries' names of ``target`` written by this process: a tag, then
    ``.tmp`` and any suffix, follow. A long target name is shortened in it, so that the whole name
    stays within the 255 bytes a file name may have (a photo's 240-character name made its saliency
    map's temporary too long to create)."""
    return f".{_temp_stem(Path(target).name)}.{_HOST}.{os.getpid()}."


_TAIL = 48      # bytes kept for the tag (a thread id: up to 20 digits), .tmp, the suffix and .kept.npy


def _temp_stem(name: str) -> str:
    """``name`` cut to what leaves a temporary's name at most 255 bytes (the room reckoned for a pid of
    10 digits, so that the cut does not depend on which process writes)."""
    return cut_name(name, 255 - len(f"..{_HOST}.{'9' * 10}.".encode()) - _TAIL)


def cut_name(name: str, max_bytes: int) -> str:
    """``name`` cut to at most ``max_bytes`` bytes on disk, never inside a UTF-8 character (a name that
    is not UTF-8, as os.fsdecode gives it, is cut as bytes); at least one byte is kept."""
    raw = os.fsencode(name)
    if len(raw) <= max_bytes:
        return name
    n = max(max_bytes, 1)
    while n > 1 and raw[n] & 0xC0 == 0x80:          # a continuation byte: back to the character's start
        n -= 1
    return os.fsdecode(raw[:n])


def temp_path(target, suffix: str = "", tag: str | None = None) -> Path:
    """A temporary file's path for ``target``, in its folder: hidden, naming this host and process.
    ``tag`` (default: the calling thread's id) keeps two writers of one process apart."""
    tag = str(threading.get_ident()) if tag is None else tag
    return Path(target).with_name(f"{temp_prefix(target)}{tag}.tmp{suffix}")


def remove_stale_temps(folder, target: str | None = None, min_age: float = 1.0) -> int:
    """Delete the temporaries in ``folder`` (of the file named ``target`` only, if given) that this
    host's processes left: unlocked, of a process that has ended (or of an earlier process with this
    one's pid), ``min_age`` seconds old or more (a writer takes its lock right after creating the
    file). Returns how many were removed. Reads the whole folder: call it once per folder, not per
    file. Never raises."""
    if fcntl is None:
        return 0
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        m = _TEMP_NAME.match(e.name)
        if m is None or (target is not None and m["target"] != _temp_stem(target)):
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and _alive(pid):
            continue
        try:
            fd = os.open(e.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)        # held: a live writer (another pid space)
            st = os.fstat(fd)
            earlier = pid != os.getpid() or st.st_mtime < _STARTED - min_age   # not ours: older than us
            if time.time() - st.st_mtime >= min_age and earlier:
                if stat.S_ISREG(st.st_mode):
                    os.unlink(e.path)
                    removed += 1
                elif stat.S_ISDIR(st.st_mode):                  # a staging folder (see staged)
                    shutil.rmtree(e.path, ignore_errors=True)
                    removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def held(path):
    """Hold an exclusive flock on ``path`` (a temporary being written) until the block ends, so that
    remove_stale_temps leaves it alone; nothing where flock is missing."""
    return _flocked(lambda: os.open(path, os.O_RDONLY))


@contextmanager
def _flocked(open_fd, waiting=None):
    """Hold an exclusive flock on the file descriptor ``open_fd()`` opens, for the block, saying
    ``waiting`` on stderr when another process holds it first. Where flock is missing, or the file
    system has no locks, the block runs unlocked."""
    fd = None
    if fcntl is not None:
        try:
            fd = open_fd()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if waiting else 0))
            except BlockingIOError:
                print(waiting, file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:                 # a file system without locks (ENOLCK ...): unlocked
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


_cleaned, _cleaned_lock = set(), threading.Lock()


def clean_once(folder):
    """remove_stale_temps(folder) the first time this process writes there (or opens it as a cache): a
    folder of 20,000 maps is read once, not once per map (what a process that dies later leaves, the
    next run removes). A folder that does not exist yet is looked at again next time."""
    key = os.path.abspath(folder)
    if not os.path.isdir(key):
        return
    with _cleaned_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    remove_stale_temps(folder)


def _alive(pid: int) -> bool:
    """Whether another process ``pid`` runs on this host (True where that cannot be told: not POSIX)."""
    if os.name != "posix":          # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                 # PermissionError: another user's live process
        return True
    return True


@contextmanager
def staged(folder, name="staged"):
    """A hidden folder in ``folder`` to write a set of files into before any of them replaces the
    files of an earlier run (see publish); removed at the end of the block, and, when a kill left it,
    by the next remove_stale_temps there (its writer holds a flock on it meanwhile)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean_once(folder)
    _, stage = _create_exclusive(folder, temp_prefix(folder / name), ".tmp", make=os.mkdir)
    stage = Path(stage)
    try:
        with held(stage):
            yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage, folder, files) -> None:
    """Move ``files`` (paths relative to ``stage``) into ``folder``, each renamed over the file of the
    same name (written through a symlink, keeping a replaced file's mode, copied where the target is on
    another file system), its folders made as needed. The files are moved one by one: a run killed
    during the moves leaves each file whole, some new and some old (milliseconds, against a whole
    run's minutes when the run wrote in place); hold folder_lock(folder) to keep two runs apart."""
    for rel in dict.fromkeys(files):                 # each once, in order
        src, dst = Path(stage) / rel, Path(folder) / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() and dst.exists():
            dst = Path(os.path.realpath(dst))        # as atomic_write: the link kept, its target replaced
        try:
            if dst.is_file():
                os.chmod(src, stat.S_IMODE(os.stat(dst).st_mode))
            os.replace(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise OSError(f"cannot write {dst}: {e.strerror or e}") from None
            with open(src, "rb") as fh:              # another file system: a copy, atomically
                atomic_write(dst, lambda out: shutil.copyfileobj(fh, out))
            os.unlink(src)


def folder_lock(folder, name=".publish.lock"):
    """Hold an exclusive flock on ``folder/name`` (made if missing) for the block, waiting (and saying
    so) for another process that holds it: two runs publishing into one folder take turns. Nothing
    where flock is missing or the file system has no locks."""
    path = os.path.join(folder, name)

    def open_fd():
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:                 # another user's lock file: a lock all the same
            return os.open(path, os.O_RDONLY)
    return _flocked(open_fd, f"{folder}: another run is writing its results there; waiting for it to finish")


def atomic_write(path, write, suffix=".tmp"):
    """write(binary file) into a temporary file in path's folder, then rename it to path (see
    scratchnet.tempfiles: the suffix starts with .tmp). A symlink is written through (its target
    replaced, the link kept); an existing file that is not a regular one (/dev/stdout, a pipe) is
    written directly, as nothing can be renamed over it.

    The temporary is created with O_EXCL and mode 0666, so the kernel applies the process's umask
    (0644 under the usual 022), as for any file the user writes; tempfile.mkstemp would make it 0600,
    and reading the umask means setting it, which is not safe beside other threads. A file replaced
    keeps its mode."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    mode = None
    if path.exists():
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):            # a device, a pipe, a socket: no rename over it
            with open(path, "wb") as fh:
                write(fh)
            return
        mode = stat.S_IMODE(st.st_mode)
        path = Path(os.path.realpath(path))         # a symlink: replace what it points to
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_once(path.parent)             # what an earlier, killed process left in this folder
        fd, tmp = _create_exclusive(path.parent, prefix=temp_prefix(path), suffix=suffix)
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e} (in the folder {path.parent})") from None
    try:
        with held(tmp):                     # until renamed: remove_stale_temps leaves it alone
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):          # name the target, not the hidden temporary (or nothing)
            what = e.strerror or str(e)
            if e.errno is None and "requested and" in what:      # NumPy's words for a short write
                what += " (is the disk full?)"
            raise OSError(f"cannot write {path}: {what}") from None
        raise


def _create_exclusive(folder, prefix, suffix, make=None, attempts=100):
    """(fd, path) of a new file in ``folder`` named prefix + random + suffix, opened for writing
    with O_EXCL (never an existing file) and mode 0666 less the umask; or, given ``make`` (os.mkdir),
    (what make(path) returns, path) of a new entry it made."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    make = make or (lambda name: os.open(name, flags, 0o666))
    for _ in range(attempts):
        name = os.path.join(folder, prefix + secrets.token_hex(4) + suffix)
        try:
            return make(name), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder} after {attempts} tries")


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file (see atomic_write); returns path."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
    return Path(path)
