"""Parquet on disk: the only module that knows the file format.

Writes are atomic (temporary file in the same directory, then rename), so a reader never sees a
half-written table and an interrupted write leaves the previous file intact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aqgan_ray.errors import UserError


def write_table(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write ``rows`` (one mapping per row, same keys) as one Parquet file, atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(pa.Table.from_pylist([dict(r) for r in rows]), tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror}); choose a writable path") from None
    return path

