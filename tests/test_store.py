"""The evaluation store: atomic, uniquely named Parquet parts; reads deduplicate by config hash;
unreadable parts are reported and skipped; other schema versions and other setups are refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aqgan_ray.atomic import DEAD_GRACE_S, STALE_AFTER_S, clean_stale_temps, write_text
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


def test_a_failed_flush_keeps_its_rows_for_the_next(tmp_path):
    root = tmp_path / "evaluations"
    store = EvaluationStore(root, "key")
    _add(store, 1)
    root.write_text("a file where the store's folder should be")  # every write now fails
    with pytest.raises(UserError, match="cannot write"):
        store.flush()
    root.unlink()
    store.close()
    assert len(_parts(root)) == 1 and len(EvaluationStore(root, "key")) == 1


def _two_parts(root: Path) -> tuple[Path, Path]:
    with EvaluationStore(root, "key", flush_rows=3) as store:
        for i in range(6):
            _add(store, i)
    good, other = _parts(root)
    return good, other


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file all the same")
def test_unreadable_for_permissions_is_refused_and_not_renamed(tmp_path):
    _, locked = _two_parts(tmp_path)
    locked.chmod(0)
    try:
        with pytest.raises(UserError, match=f"cannot read store part {locked}.*Permission"):
            EvaluationStore(tmp_path, "key")
        assert locked.exists() and not list(tmp_path.glob("*.corrupt"))
    finally:
        locked.chmod(0o644)
    assert len(EvaluationStore(tmp_path, "key")) == 6


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc")
def test_an_io_error_is_refused_in_one_line_and_renames_nothing(tmp_path):
    # Reading /proc/self/mem from offset 0 fails with a real EIO: a disk that cannot be read.
    _two_parts(tmp_path)
    failing = tmp_path / "part-99999999T000000000000-eio.parquet"
    failing.symlink_to("/proc/self/mem")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match=f"cannot read store part {failing} \\(Input/output"):
        EvaluationStore(tmp_path, "key")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_part_compacted_away_while_reading_is_skipped_and_its_merge_read(tmp_path):
    _two_parts(tmp_path)
    listed_before = _parts(tmp_path)
    merged = EvaluationStore(tmp_path, "key").compact()  # another driver, between list and read

    class ListedBeforeTheCompaction(EvaluationStore):
        stale = [listed_before]

        def _parts(self) -> list[Path]:
            return self.stale.pop() if self.stale else super()._parts()

    store = ListedBeforeTheCompaction(tmp_path, "key")
    assert len(store) == 6 and store.parts_read == 1 and store.skipped == []
    assert _parts(tmp_path) == [merged] and not list(tmp_path.glob("*.corrupt"))


def _rewrite(path: Path, table: pa.Table) -> None:
    pq.write_table(table.replace_schema_metadata(EVALUATION_SCHEMA.metadata), path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop_columns(["eval_s"]), "has no column 'eval_s'"),
        (
            lambda t: t.set_column(3, "val_acc", t["val_acc"].cast(pa.float32())),
            "has column 'val_acc' of type float, expected double",
        ),
        (lambda t: t.append_column("extra", pa.array([1] * len(t))), "has unknown column 'extra'"),
    ],
    ids=["missing", "mistyped", "extra"],
)
def test_a_part_with_other_columns_is_refused_in_one_line_not_renamed(tmp_path, change, message):
    _, odd = _two_parts(tmp_path)
    _rewrite(odd, change(pq.read_table(odd)))
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(
        UserError, match=f"store part {re.escape(str(odd))} {message}.*move it out"
    ) as info:
        EvaluationStore(tmp_path, "key")
    assert "\n" not in str(info.value)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_bad_magic_is_a_format_error_and_quarantined(tmp_path):
    good, bad = _two_parts(tmp_path)
    bad.write_bytes(b"not parquet at all")  # bad magic
    store = EvaluationStore(tmp_path, "key", warn=False)
    assert [s.path for s in store.skipped] == [bad] and "magic" in store.skipped[0].reason
    store.quarantine_unreadable()
    assert _parts(tmp_path) == [good] and (tmp_path / (bad.name + ".corrupt")).exists()


def test_opening_removes_only_stale_temporaries_of_dead_writers(tmp_path):
    _two_parts(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid, old = int(dead.stdout), time.time() - 2 * DEAD_GRACE_S
    orphan = tmp_path / f".part-1-a.parquet.{dead_pid}.tmp"  # a killed writer's, a while ago
    fresh = tmp_path / f".part-1-b.parquet.{dead_pid}.tmp"  # maybe a writer on another machine
    live = tmp_path / f".part-1-c.parquet.{os.getppid()}.tmp"  # a live process's
    ancient = tmp_path / f".part-1-d.parquet.{os.getppid()}.tmp"  # untouched for hours
    unrelated = tmp_path / f".notes.{dead_pid}.tmp.bak"
    for path in (orphan, fresh, live, ancient, unrelated):
        path.write_bytes(b"half a part")
    for path in (orphan, live, unrelated):
        os.utime(path, (old, old))
    os.utime(ancient, (time.time() - 2 * STALE_AFTER_S,) * 2)
    EvaluationStore(tmp_path, None)  # a read-only view changes nothing
    assert orphan.exists() and ancient.exists()
    store = EvaluationStore(tmp_path, "key")
    assert len(store) == 6 and store.skipped == []
    assert not orphan.exists() and not ancient.exists()
    assert fresh.exists() and live.exists() and unrelated.exists()


def test_write_atomic_removes_its_own_stale_temporary(tmp_path):
    target = tmp_path / "state.pt"
    leftover = tmp_path / ".state.pt.999999999.tmp"  # no such pid
    other = tmp_path / ".trace.parquet.999999999.tmp"
    for path in (leftover, other):
        path.write_bytes(b"half")
        os.utime(path, (time.time() - 2 * DEAD_GRACE_S,) * 2)
    write_text(target, "new")
    assert target.read_text() == "new" and not leftover.exists() and other.exists()
    assert clean_stale_temps(tmp_path) == [other]


SIGTERM_WRITER = """
import signal, sys, time
from aqgan_ray.store import EvaluationStore

def stop(*_):  # what the CLI does with SIGTERM: unwind the stack like Ctrl-C
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, stop)
with EvaluationStore(sys.argv[1], "key", flush_rows=1000, flush_s=3600) as store:
    for i in range(int(sys.argv[2])):
        store.add(config_hash=f"h{i}", w_bits=[8], a_bits=[8], val_acc=i / 100,
                  source="collect", eval_s=0.1)
        print(f"told h{i}", flush=True)
    time.sleep(60)
"""


def test_sigterm_loses_no_told_row(tmp_path):
    root = tmp_path / "evaluations"
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_WRITER, str(root), "20"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    told = [child.stdout.readline().split()[1] for _ in range(20)]
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=60)
    assert child.returncode != 0  # stopped, not finished
    assert not list(root.glob(".*"))  # nothing half-written left behind
    store = EvaluationStore(root, "key")
    assert sorted(store.get(h)["config_hash"] for h in told) == sorted(told)
