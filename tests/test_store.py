"""The evaluation store: atomic, uniquely named Parquet parts; reads deduplicate by config hash;
unreadable parts are reported and skipped; other schema versions and other setups are refused."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aqgan_ray.config import QuantConfig
from aqgan_ray.errors import UserError
from aqgan_ray.store import EVALUATION_SCHEMA, EvaluationStore

LAYERS = ("a", "b", "c")


def _config(i: int) -> QuantConfig:
    return QuantConfig(LAYERS, (2 + i % 7, 8, 4), (8, 2 + i // 7 % 7, 6))


def _add(store: EvaluationStore, i: int, acc: float | None = None, source: str = "collect"):
    config = _config(i)
    return store.add(
        config_hash=config.hash,
        w_bits=config.w_bits,
        a_bits=config.a_bits,
        val_acc=acc if acc is not None else i / 100,
        source=source,
        eval_s=0.5,
        node_id="node",
        worker_pid=123,
        sampler="level-jitter",
    )


def _parts(root: Path) -> list[Path]:
    return sorted(root.glob("part-*.parquet"))


def test_rows_round_trip_with_schema_and_version(tmp_path):
    root = tmp_path / "evaluations"
    with EvaluationStore(root, "key") as store:
        for i in range(5):
            _add(store, i)
    assert len(_parts(root)) == 1 and not list(root.glob(".*"))  # no temporary file left
    table = pq.read_table(_parts(root)[0])
    assert table.schema.names == EVALUATION_SCHEMA.names
    assert table.schema.metadata[b"aqgan_ray.schema_version"] == b"1"
    again = EvaluationStore(root, "key")
    assert len(again) == 5 and _config(3).hash in again
    row = again.get(_config(3).hash)
    assert row["w_bits"] == list(_config(3).w_bits) and row["val_acc"] == 0.03
    assert row["schema_version"] == 1 and row["source"] == "collect"
    frame = again.to_pandas()
    assert list(frame.columns) == list(EVALUATION_SCHEMA.names) and len(frame) == 5


def test_flushes_in_parts_and_reads_deduplicate_by_hash(tmp_path):
    root = tmp_path / "evaluations"
    with EvaluationStore(root, "key", flush_rows=2) as store:
        for i in range(5):
            _add(store, i)
        assert len(_parts(root)) == 2  # two full buffers written, one row still buffered
    assert len(_parts(root)) == 3
    # A second driver (its own view of the store) evaluates config 0 again: the first wins.
    with EvaluationStore(root, "key") as other:
        other._rows.clear()
        _add(other, 0, acc=0.99, source="haq")
    merged = EvaluationStore(root, "key")
    assert len(merged) == 5
    assert merged.get(_config(0).hash)["val_acc"] == 0.0
    assert merged.get(_config(0).hash)["source"] == "collect"


def test_adding_a_stored_config_keeps_the_first_row(tmp_path):
    store = EvaluationStore(tmp_path, "key")
    first = _add(store, 1, acc=0.5)
    assert _add(store, 1, acc=0.9) is first
    store.close()
    assert len(pq.read_table(_parts(tmp_path)[0])) == 1


def test_interrupted_block_still_writes_what_it_buffered(tmp_path):
    with pytest.raises(KeyboardInterrupt), EvaluationStore(tmp_path, "key") as store:
        _add(store, 1)
        _add(store, 2)
        raise KeyboardInterrupt
    assert len(EvaluationStore(tmp_path, "key")) == 2


def test_corrupt_part_is_reported_skipped_and_quarantined(tmp_path, capsys):
    with EvaluationStore(tmp_path, "key", flush_rows=3) as store:
        for i in range(6):
            _add(store, i)
    good, bad = _parts(tmp_path)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a truncated write from a crashed machine
    store = EvaluationStore(tmp_path, "key")
    assert len(store) == 3 and [s.path for s in store.skipped] == [bad]
    assert "skipping unreadable store part" in capsys.readouterr().err
    moved = store.quarantine_unreadable()
    assert moved == [bad.with_name(bad.name + ".corrupt")] and moved[0].read_bytes()
    assert _parts(tmp_path) == [good]
    assert len(EvaluationStore(tmp_path, "key").skipped) == 0


def test_other_schema_version_is_refused_and_left_intact(tmp_path):
    with EvaluationStore(tmp_path, "key") as store:
        _add(store, 1)
    future = EVALUATION_SCHEMA.with_metadata({b"aqgan_ray.schema_version": b"99"})
    path = tmp_path / "part-99999999T000000000000-future.parquet"
    pq.write_table(pa.Table.from_pylist([], schema=future), path)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(UserError, match="schema version 99"):
        EvaluationStore(tmp_path, "key")
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_rows_of_another_setup_are_refused(tmp_path):
    with EvaluationStore(tmp_path, "key-of-seed-0") as store:
        _add(store, 1)
    with pytest.raises(UserError, match="different model"):
        EvaluationStore(tmp_path, "key-of-seed-1")
    assert len(EvaluationStore(tmp_path, None)) == 1  # read-only view for reports
    with pytest.raises(ValueError, match="read-only"):
        _add(EvaluationStore(tmp_path, None), 2)


def test_compact_merges_every_part_including_other_writers(tmp_path):
    store = EvaluationStore(tmp_path, "key", flush_rows=1)
    for i in range(4):
        _add(store, i)
    late = EvaluationStore(tmp_path, "key", flush_rows=1)  # appends after `store` was opened
    _add(late, 10)
    assert len(_parts(tmp_path)) == 5
    merged = store.compact()
    assert _parts(tmp_path) == [merged]
    assert len(EvaluationStore(tmp_path, "key")) == 5
