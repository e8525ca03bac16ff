"""One way to write a file: to a temporary name in the same folder, flushed to disk, renamed.

A reader then sees the old file or the new one, never half of one, and a write interrupted at
any point (Ctrl-C, a killed driver, a full disk) leaves the previous file whole. Every file the
project writes (store parts, tables, checkpoints, JSON, the report) goes through ``write_atomic``.
"""

from __future__ import annotations

import json
import os
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
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"cannot write {path} ({exc.strerror or exc}); choose a writable path"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_atomic(path, lambda fh: fh.write(text.encode()))


def write_json(path: Path, obj: Any) -> Path:
    """Strict JSON (``NaN`` refused: no JSON reader accepts it), indented for people."""
    return write_text(path, json.dumps(obj, indent=1, allow_nan=False))


def _fsync_dir(folder: Path) -> None:
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
