"""Parquet on disk: the only module that knows the file format.

Two kinds of files:

- ``write_table``: one small table written whole (benchmarks, comparison tables).
- ``EvaluationStore``: the evaluation store under ``results/<experiment>/evaluations/``, one row
  per evaluation, grown by appending uniquely named part files.

Every write is atomic (``atomic.write_atomic``: a temporary file in the same directory, synced,
then renamed), so a reader never sees a half-written file and an interrupted write leaves what
was there intact. Part files are never rewritten in place: several drivers may append to one
store at once, and a reader merges the parts and keeps the first evaluation of each config
hash.

A part is set aside (``quarantine_unreadable``) only when its bytes are not a Parquet file of
this store: a read that fails for the machine's reasons (permissions, an I/O error) is refused
with one line and renames nothing, and a part another driver compacted away is simply gone.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aqgan_ray.atomic import clean_stale_temps, fsync_dir, write_atomic
from aqgan_ray.errors import UserError

# Bump when a column changes meaning or type; a store of another version is refused, not guessed.
SCHEMA_VERSION = 1
_VERSION_KEY = b"aqgan_ray.schema_version"

EVALUATION_SCHEMA = pa.schema(
    [
        ("config_hash", pa.string()),
        ("w_bits", pa.list_(pa.int8())),  # layer-table order
        ("a_bits", pa.list_(pa.int8())),
        ("val_acc", pa.float64()),
        ("source", pa.string()),  # who asked: collect, aqgan, haq, uniform, optuna, random
        ("sampler", pa.string()),  # how the asker drew the config (collect's samplers), or null
        ("eval_s", pa.float64()),  # evaluator wall seconds for this config
        ("node_id", pa.string()),  # Ray node that evaluated it
        ("worker_pid", pa.int64()),
        # Fingerprint of what determines an accuracy (weights, calibration, validation images,
        # evaluation protocol): rows measured under another setup must never be mixed in.
        ("eval_key", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("schema_version", pa.int16()),
    ],
    metadata={_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)
COLUMNS = tuple(EVALUATION_SCHEMA.names)


def write_table(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write ``rows`` (one mapping per row, same keys) as one Parquet file, atomically."""
    return _write_atomic(pa.Table.from_pylist([dict(r) for r in rows]), Path(path))


# A search's trace: every evaluation a method asked for, in the order it asked, with the
# design point it searched for. Its own version: it changes independently of the store.
TRACE_SCHEMA_VERSION = 2  # 2: ``origin``
TRACE_SCHEMA = pa.schema(
    [
        ("method", pa.string()),
        ("hw", pa.string()),
        ("metric", pa.string()),  # the budget's metric
        ("budget", pa.float64()),  # the budget, absolute, in the metric's unit
        ("seed", pa.int64()),
        ("index", pa.int32()),  # 0-based position in the search's evaluation sequence
        ("config_hash", pa.string()),
        ("w_bits", pa.list_(pa.int8())),
        ("a_bits", pa.list_(pa.int8())),
        ("val_acc", pa.float64()),
        ("cost", pa.float64()),  # the budget metric of this config
        ("within_budget", pa.bool_()),
        ("cached", pa.bool_()),  # answered from the store (charged all the same)
        ("eval_s", pa.float64()),
        ("elapsed_s", pa.float64()),  # search wall seconds when the result was told
        ("best_so_far_val_acc", pa.float64()),  # best within budget so far (NaN before the first)
        ("origin", pa.string()),  # where the config came from (``Proposer.origin``)
        ("schema_version", pa.int16()),
    ],
    metadata={_VERSION_KEY: str(TRACE_SCHEMA_VERSION).encode()},
)


def write_trace(rows: Sequence[Mapping[str, Any]], identity: Mapping[str, Any], path: Path) -> Path:
    """Write a search trace (``aqgan_ray.search``) as one Parquet file, atomically."""
    constant = {
        "method": identity["method"],
        "hw": identity["hw"],
        "metric": identity["metric"],
        "budget": identity["budget"],
        "seed": identity["seed"],
        "schema_version": TRACE_SCHEMA_VERSION,
    }
    records = [{**constant, **{k: row[k] for k in TRACE_SCHEMA.names if k in row}} for row in rows]
    return _write_atomic(pa.Table.from_pylist(records, schema=TRACE_SCHEMA), Path(path))


def read_frame(path: Path):
    """A Parquet file or dataset as a pandas DataFrame (reports and comparisons)."""
    try:
        return pq.read_table(Path(path)).to_pandas()
    except (OSError, pa.ArrowInvalid) as exc:
        raise UserError(f"cannot read {path} ({exc}); rebuild it with `aqgan-ray run`") from None


def _write_atomic(table: pa.Table, path: Path) -> Path:
    return write_atomic(path, lambda fh: pq.write_table(table, fh))


@dataclass(frozen=True)
class SkippedPart:
    """A part whose bytes are not a readable Parquet file of this store (truncated, bad magic,
    no aqgan-ray schema version): skipped, and set aside by ``quarantine_unreadable``."""

    path: Path
    reason: str


class EvaluationStore:
    """The evaluations of one experiment: a cache keyed by config hash, persisted as Parquet.

    Opened with the ``eval_key`` of the current setup, it refuses a store holding rows of
    another one; opened with ``eval_key=None`` it only reads (reports, comparisons).

    ``add`` buffers rows and writes a part file every ``flush_rows`` rows or ``flush_s``
    seconds, and on ``flush``/``close``, so a run of thousands of evaluations makes a few dozen
    files. Leaving a ``with`` block flushes on any exception, ``KeyboardInterrupt`` and a
    SIGTERM turned into an exception included, so such a stop loses only evaluations in
    flight; a SIGKILL or power cut also loses the rows buffered since the last part (at most
    ``flush_rows``), which the next run evaluates again.

    A writable store (``eval_key`` given) removes temporary files killed writers left in its
    folder when it opens (``atomic.clean_stale_temps``).
    """

    def __init__(
        self,
        root: Path,
        eval_key: str | None,
        flush_rows: int = 64,
        flush_s: float = 5.0,
        warn: bool = True,
    ):
        self.root = Path(root)
        self.eval_key = eval_key
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.skipped: list[SkippedPart] = []
        self.parts_read = 0
        self._rows: dict[str, dict[str, Any]] = {}
        self._buffer: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        if eval_key is not None and self.root.is_dir():
            clean_stale_temps(self.root)
        self._load(warn)

    # -- reading ---------------------------------------------------------------------------
    def _parts(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("part-*.parquet") if p.is_file())

    def _load(self, warn: bool) -> None:
        rows: list[dict[str, Any]] = []
        for _, table in self._read_parts():
            self.parts_read += 1
            rows.extend(table.to_pylist())
        if warn:
            for skipped in self.skipped:
                print(
                    f"warning: skipping unreadable store part {skipped.path} ({skipped.reason}); "
                    "the configs it held will be evaluated again",
                    file=sys.stderr,
                )
        foreign = {r["eval_key"] for r in rows} - {self.eval_key}
        if self.eval_key is not None and foreign:
            raise UserError(
                f"the evaluation store {self.root} holds evaluations of a different model, "
                "calibration, validation split or evaluation protocol (seed, preset or "
                "checkpoint changed); use another --results directory for this setup"
            )
        rows.sort(key=lambda r: r["created_at"])  # the first evaluation of a config wins
        for row in rows:
            self._rows.setdefault(row["config_hash"], row)

    def _read_parts(self) -> Iterator[tuple[Path, pa.Table]]:
        """(path, table) of every readable part. A part that vanishes while being read was
        compacted by another driver into a new part: the folder is listed again for it."""
        seen: set[Path] = set()
        pending = self._parts()
        while pending:
            vanished = False
            for path in pending:
                seen.add(path)
                try:
                    table = self._read_part(path)
                except FileNotFoundError:
                    vanished = True
                    continue
                if table is not None:
                    yield path, table
            pending = [p for p in self._parts() if p not in seen] if vanished else []

    def _read_part(self, path: Path) -> pa.Table | None:
        """The part's rows, or None when its bytes are no Parquet file of this store (recorded
        in ``skipped``). Raises FileNotFoundError if it is gone, and ``UserError`` when it
        cannot be read (permissions, I/O error: the part may be fine, so nothing is renamed)
        or holds another schema version or other columns (refused, not guessed)."""
        try:
            data = path.read_bytes()  # read here, so that any OSError is the machine's
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise UserError(
                f"cannot read store part {path} ({exc.strerror or exc}); fix its permissions "
                "or the disk and run again"
            ) from None
        # From here on the bytes are in memory: every error is the file's format.
        try:
            schema = pq.read_schema(pa.BufferReader(data))
        except (OSError, pa.ArrowException) as exc:
            self._skip(path, _reason(exc))
            return None
        version = (schema.metadata or {}).get(_VERSION_KEY)
        if version is None:
            self._skip(path, "no aqgan-ray schema version")
            return None
        if version != str(SCHEMA_VERSION).encode():
            raise UserError(
                f"store part {path} was written with evaluation schema version "
                f"{version.decode(errors='replace')}, but this aqgan-ray reads version "
                f"{SCHEMA_VERSION}; use the aqgan-ray that wrote it, or another --results "
                "directory"
            )
        _check_columns(path, schema)
        try:
            return pq.read_table(pa.BufferReader(data), schema=EVALUATION_SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            self._skip(path, _reason(exc))
            return None

    def _skip(self, path: Path, reason: str) -> None:
        if all(s.path != path for s in self.skipped):
            self.skipped.append(SkippedPart(path, reason))

    def __len__(self) -> int:
        return len(self._rows)

    def part_count(self) -> int:
        return len(self._parts())

    def __contains__(self, config_hash: object) -> bool:
        return config_hash in self._rows

    def get(self, config_hash: str) -> dict[str, Any] | None:
        return self._rows.get(config_hash)

    def rows(self) -> list[dict[str, Any]]:
        """One row per distinct config (its first evaluation), oldest first."""
        return list(self._rows.values())

    def to_pandas(self):
        return pa.Table.from_pylist(self.rows(), schema=EVALUATION_SCHEMA).to_pandas()

    # -- writing ---------------------------------------------------------------------------
    def add(
        self,
        *,
        config_hash: str,
        w_bits: Sequence[int],
        a_bits: Sequence[int],
        val_acc: float,
        source: str,
        eval_s: float,
        node_id: str | None = None,
        worker_pid: int | None = None,
        sampler: str | None = None,
    ) -> dict[str, Any]:
        """Record one evaluation; a config already stored keeps its first row."""
        if self.eval_key is None:
            raise ValueError("a store opened without an eval_key is read-only")
        row = {
            "config_hash": config_hash,
            "w_bits": list(w_bits),
            "a_bits": list(a_bits),
            "val_acc": float(val_acc),
            "source": source,
            "sampler": sampler,
            "eval_s": float(eval_s),
            "node_id": node_id,
            "worker_pid": worker_pid,
            "eval_key": self.eval_key,
            "created_at": datetime.now(UTC),
            "schema_version": SCHEMA_VERSION,
        }
        if config_hash in self._rows:
            return self._rows[config_hash]
        # Buffered before it is known: a stop between the two lines (a signal's exception)
        # then at worst writes a row twice, never marks as stored a row nothing will write.
        self._buffer.append(row)
        self._rows[config_hash] = row
        if (
            len(self._buffer) >= self.flush_rows
            or time.monotonic() - self._last_flush >= self.flush_s
        ):
            self.flush()
        return row

    def flush(self) -> Path | None:
        """Write buffered rows as one new part file; returns its path (None if nothing new)."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return None
        rows, path = self._buffer, self._part_path()
        try:
            self._buffer = []
            return self._write_part(rows, path)
        except BaseException:
            # Stopped (a signal's exception, a full disk): the rows are kept for the next
            # flush (``__exit__``'s) unless the part was already renamed into place, which
            # would write them twice.
            if not path.exists():
                self._buffer = rows
            raise

    def _part_path(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        return self.root / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"

    def _write_part(self, rows: Iterable[Mapping[str, Any]], path: Path | None = None) -> Path:
        table = pa.Table.from_pylist(list(rows), schema=EVALUATION_SCHEMA)
        return _write_atomic(table, path or self._part_path())

    def quarantine_unreadable(self) -> list[Path]:
        """Rename parts whose bytes are unreadable (``skipped``) to ``*.corrupt``: kept for
        inspection, no longer read. The folder is synced, so the renames survive a crash."""
        moved = []
        for skipped in self.skipped:
            target = skipped.path.with_name(skipped.path.name + ".corrupt")
            try:
                os.replace(skipped.path, target)
            except FileNotFoundError:  # another driver set it aside first
                continue
            except OSError as exc:
                raise UserError(
                    f"cannot set aside unreadable store part {skipped.path} "
                    f"({exc.strerror or exc}); move it out of {self.root} by hand"
                ) from None
            moved.append(target)
        if moved:
            fsync_dir(self.root)
        return moved

    def compact(self) -> Path | None:
        """Merge every readable part into one, then delete the merged parts.

        Safe to interrupt: the merged file is written before any part is removed, and a config
        present in two files is read once.
        """
        self.flush()
        # Merge what the files hold now, not this object's view: another driver may have
        # appended since this store was opened, and only parts read here may be deleted.
        tables, parts = [], []
        for path, table in self._read_parts():
            tables.append(table)
            parts.append(path)
        if len(parts) < 2:
            return None
        first: dict[str, dict[str, Any]] = {}
        for row in sorted(pa.concat_tables(tables).to_pylist(), key=lambda r: r["created_at"]):
            first.setdefault(row["config_hash"], row)
        merged = self._write_part(first.values())  # durable (file and folder synced) first
        for part in parts:
            part.unlink(missing_ok=True)
        fsync_dir(self.root)  # else a power cut may bring parts back: harmless, read once
        return merged

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> EvaluationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_columns(path: Path, schema: pa.Schema) -> None:
    """Refuse, with one line, a part of this schema version whose columns differ from
    ``EVALUATION_SCHEMA``: not a damaged write (those fail to parse) but a file made by other
    means, which is the user's to look at, not ours to rename or to read half of."""
    fix = "move it out of the store (e.g. rename it to *.corrupt) and run again"
    for field in EVALUATION_SCHEMA:
        index = schema.get_field_index(field.name)
        if index < 0:
            raise UserError(f"store part {path} has no column {field.name!r}; {fix}")
        found = schema.field(index).type
        if found != field.type:
            raise UserError(
                f"store part {path} has column {field.name!r} of type {found}, expected "
                f"{field.type}; {fix}"
            )
    extra = [name for name in schema.names if name not in COLUMNS]
    if extra:
        raise UserError(f"store part {path} has unknown column {extra[0]!r}; {fix}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
