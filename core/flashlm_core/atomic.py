"""Atomic writes: files and folders appear whole or not at all (stdlib only)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

from flashlm_core.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; the atomic rename still keeps every output whole
    fcntl = None

# The moments a writer can die at, named so that the crash tests kill a process exactly there
# (FLASHLM_CRASH_AT=NAME[:N] kills it with SIGKILL at the Nth time it passes NAME; tests/test_faults.py).
CRASH_POINTS = ("file-written", "dir-written", "old-moved-aside", "new-in-place")
_passed: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here, as kill -9 would, when FLASHLM_CRASH_AT names this point (and its count is reached)."""
    wanted, _, count = os.environ.get("FLASHLM_CRASH_AT", "").partition(":")
    if wanted != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normal_mode(path: str | os.PathLike) -> None:
    """Give a file we wrote the mode of a file made under the umask (0644 for the usual 022), whatever its writer did."""
    os.chmod(path, 0o666 & ~_umask())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        normal_mode(tmp)  # mkstemp makes 0600
        crash_point("file-written")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = True):
    """Yield a temp folder beside `path`; on success it replaces `path`, on error it is removed.

    The old folder is moved aside before the swap and deleted after, so a crash at any point
    leaves either the old or the new folder complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        crash_point("dir-written")
        old = None
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            crash_point("old-moved-aside")
        os.replace(tmp, path)
        if old is not None:
            crash_point("new-in-place")
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise



@contextmanager
def exclusive(path: str | os.PathLike, *, what: str = "output"):
    """Hold an exclusive lock on `path` (a folder or file not yet written) while the block runs: a second writer of
    the same path gets a ConfigError at once instead of silently replacing the first one's work. The lock is an
    advisory flock on `.NAME.lock` beside it, removed when the writer is done (a writer that opened the file just
    before its removal sees that the path no longer names it, and locks the new one)."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"{path}: another {what} writer (pid {holder}) is writing it now; wait for it to finish, "
                              "or pick another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed this lock file as we opened it: lock the one at the path now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)  # removed while still held, so no writer can hold a lock on a file no longer there
        os.close(fd)  # closing releases the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def recover(path: str | os.PathLike) -> list[str]:
    """Clean up after a writer of `path` that was killed (kill -9, power loss); returns what was done.

    Temp files/folders `.NAME.PID-*.tmp` of dead processes are removed. A `.NAME.old-PID` folder of a
    dead process is the previous complete copy, moved aside just before the swap: it is put back when
    `path` is missing (the crash fell between the two renames), else removed.
    """
    path = Path(path)
    done = []
    if not path.parent.is_dir():
        return done
    for entry in path.parent.glob(f".{path.name}.*"):
        rest = entry.name[len(path.name) + 2 :]
        if rest.endswith(".tmp") and "-" in rest:
            pid = rest.split("-", 1)[0]
            action = "removed"
        elif rest.startswith("old-"):
            pid = rest[4:]
            action = "restored" if not path.exists() else "removed"
        else:
            continue
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if action == "restored":
            os.replace(entry, path)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        done.append(f"{action} {entry.name}")
    return done
