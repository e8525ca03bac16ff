"""One way to write a file: to a temporary name in the same folder, flushed to disk, renamed.

A reader then sees the old file or the new one, never half of one, and a write interrupted at
any point (Ctrl-C, a killed driver, a full disk) leaves the previous file whole. Every file the
project writes (store parts, tables, checkpoints, JSON, the report) goes through ``write_atomic``.

Order of one write: data to ``.<name>.<pid>.tmp``, fsync the file, rename over ``<name>``,
fsync the folder. A driver killed mid-write leaves only its temporary file, which
``clean_stale_temps`` removes later (results/README.md, "Crash guarantees").
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from aqgan_ray.errors import UserError


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path``, fsync it, rename it to ``path``
    and fsync the folder (so the rename itself survives a power cut). An OSError becomes a
    one-line ``UserError`` naming the path; the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path.parent, path.name)  # this file's leftovers from a killed writer
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        _remove(tmp)
        raise UserError(
            f"cannot write {path} ({exc.strerror or exc}); choose a writable path"
        ) from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(tmp: Path) -> None:
    """Best effort: the error being reported matters more than a temporary file left behind
    (the folder may be gone or unwritable), which ``clean_stale_temps`` removes later."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda fh: fh.write(text.encode()))


def write_json(path: Path, obj: Any) -> Path:
    """Strict JSON (``NaN`` refused: no JSON reader accepts it), indented for people."""
    return write_text(path, json.dumps(obj, indent=1, allow_nan=False))


# ``.<name>.<pid>.tmp``, the temporary name ``write_atomic`` gives ``<name>``.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.tmp$")
# A temporary file untouched this long belongs to no live write, whatever its pid says (the pid
# may have been reused, or belong to a driver on another machine sharing this folder).
STALE_AFTER_S = 3600.0
# A dead writer's file is removed only once it is this old: a driver on another machine
# sharing the folder has pids this machine does not know, and writes for seconds at most.
DEAD_GRACE_S = 60.0


def clean_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Remove ``write_atomic``'s temporary files left in ``folder`` by killed writers (of
    ``name`` only, if given); returns what was removed.

    Only names of the exact temporary pattern are touched, and only when their writer is gone:
    its pid is not alive here and the file is older than a minute, or the file is older than
    an hour. Best effort: a file that cannot be removed now is left for the next call.
    """
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if not entry.is_file(follow_symlinks=False):
                continue
            if age > STALE_AFTER_S or (age > DEAD_GRACE_S and not _alive(int(match["pid"]))):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone already (another driver cleaned it), or not ours to remove
            continue
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or a number we cannot ask about: assume alive
    return True


def fsync_dir(folder: Path) -> None:
    """Make a rename, creation or removal in ``folder`` durable (a power cut cannot undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename is all we can do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the data itself is synced
    finally:
        os.close(fd)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object a run wrote in its results directory (``experiment.json``, ``run.json``).
    A damaged one (a crash mid-copy, an edit) is one line naming it: the run writes it anew."""
    try:
        obj = json.loads(Path(path).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0]
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc})") from None
    else:
        if isinstance(obj, dict):
            return obj
        reason = f"a JSON {type(obj).__name__}, not an object"
    raise UserError(
        f"{path} is damaged ({reason}); delete it and run the command again (the run writes it "
        "anew), or pass --results DIR to start elsewhere"
    )
