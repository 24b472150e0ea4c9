"""``make bench`` (ingest part): where the ingest stage's seconds go, against DuckDB reading the same inbox.

    python -m bench.ingest_breakdown                  # the 1M inbox bench.run left (generated if missing)
    python -m bench.ingest_breakdown --inbox PATH     # any inbox

DuckDB alone loads every file of the inbox into a table of its own with its readers' defaults (the floor:
about 3 s for the 1M inbox). The ingest stage then runs on a fresh store, as the full run's raw steps do:
every statement is timed and counted against the phase of ingestion that issued it (by the ``Ingestor``
method), the Python around them is the rest, and the Great Expectations suites validate every raw row, as the
raw steps' checks do on a first load. Results go to ``bench/results/ingest.{json,md}``, which the README quotes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.run import RESULTS, WORK, in_fresh_process, machine

#: The phases of ingestion, by the ``cdp.ingest`` function whose statement it is (the innermost one up the stack).
PHASES = {
    "read": (
        "reading each file as text: DuckDB's reader with malformed lines set apart, the columns mapped",
        ("_read_as_text", "_read_csv", "_read_csv_by_line", "_keep_undecodable_bytes", "_read_json_lines",
         "_read_json_document"),
    ),
    "classify": (
        "classifying rows: required and parseable values, email fields naming several addresses, erased subjects",
        ("_classify", "_classify_rows", "_note_erased_extras", "_note_erased_values", "_note_suppressed",
         "_redact_shared_withdrawals", "_note_unreadable_subjects", "_suppressed_sql"),
    ),
    "reused_keys": ("keys another owner holds (each new key against the raw table's)", ("_note_reused_keys",)),
    "insert": ("the typed insert into the raw table (UTC timestamps, decimal amounts)", ("_insert_loaded",)),
    "commit": (
        "commits: the rows into the write-ahead log, and the checkpoints DuckDB runs at a commit once it passes "
        "16 MB (the rows compressed into the file)",
        ("transaction",),
    ),
    "quarantine": ("quarantine rows and their reasons", ("_load", "_quarantine_rejects", "quarantine_reasons")),
    "bookkeeping": ("file hashes and the batch ledger", ("_content_hash", "_ingested_already", "ingest_file")),
}  # fmt: skip
_PHASE_OF = {fn: phase for phase, (_, fns) in PHASES.items() for fn in fns}
_READERS = {".csv": "read_csv", ".jsonl": "read_json", ".json": "read_json", ".parquet": "read_parquet"}


def duckdb_alone(inbox: Path, scratch: Path) -> dict[str, Any]:
    """Every file of ``inbox`` into a table of its own by DuckDB's reader, checkpointed to a file."""
    import duckdb

    con = duckdb.connect(str(scratch / "plain.duckdb"))
    started = time.perf_counter()
    files = sorted(f for folder in sorted(inbox.iterdir()) if folder.is_dir() for f in sorted(folder.iterdir()))
    for i, path in enumerate(f for f in files if f.suffix in _READERS):
        con.execute(f"CREATE TABLE t{i} AS SELECT * FROM {_READERS[path.suffix]}(?)", [str(path)])
    con.execute("CHECKPOINT")
    seconds = time.perf_counter() - started
    tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    rows = sum(con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables)
    con.close()
    return {"seconds": round(seconds, 2), "files": len(tables), "rows": int(rows)}


class _TimedConnection:
    """The store's connection, with every statement's wall time counted against its ingestion phase."""

    def __init__(self, con: Any, seconds: dict[str, float]):
        self._con = con
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_name not in _PHASE_OF:
            frame = frame.f_back
        phase = _PHASE_OF[frame.f_code.co_name] if frame is not None else "other"
        started = time.perf_counter()
        try:
            return self._con.execute(*args, **kwargs)
        finally:
            self._seconds[phase] += time.perf_counter() - started


def ingest_stage(inbox: Path, scratch: Path) -> dict[str, Any]:
    """The ingest stage of a first load on a fresh store: statements by phase, then the expectation suites."""
    from cdp.config import load_settings
    from cdp.ingest import Ingestor
    from cdp.quality import validate_table
    from cdp.store import SOURCES, connect
    from cdp.suppression import store_secret

    settings = load_settings(db_path=scratch / "cdp.duckdb", home=scratch / "home", inbox=inbox)
    con = connect(settings.db_path)
    seconds: dict[str, float] = defaultdict(float)
    started, cpu = time.perf_counter(), time.process_time()
    ingestor = Ingestor(_TimedConnection(con, seconds), store_secret(con, settings.secret_path))  # type: ignore[arg-type]
    batches = [b for source in SOURCES for b in ingestor.ingest_source(inbox, source)]
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    started = time.perf_counter()
    for source in SOURCES:
        validate_table(con, f"raw_{source}")
    suites = time.perf_counter() - started
    started = time.perf_counter()
    con.execute("CHECKPOINT")
    checkpoint = time.perf_counter() - started
    con.close()
    phases = {phase: round(seconds.get(phase, 0.0), 2) for phase in (*PHASES, "other")}
    phases["python"] = round(wall - sum(seconds.values()), 2)
    return {
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "rows_in": sum(b.rows_in for b in batches),
        "files": sum(b.status != "skipped" for b in batches),
        "phases_s": phases,
        "expectation_suites_s": round(suites, 2),
        "checkpoint_s": round(checkpoint, 2),
    }


def run_one(inbox: Path) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="cdp-ingest-bench-"))
    try:
        return {
            "inbox": str(inbox),
            "duckdb_alone": duckdb_alone(inbox, scratch),
            "ingest": ingest_stage(inbox, scratch),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def to_markdown(result: dict[str, Any], host: dict[str, Any]) -> str:
    alone, ingest = result["duckdb_alone"], result["ingest"]
    total = ingest["seconds"] + ingest["expectation_suites_s"] + ingest["checkpoint_s"]
    labels = {phase: label for phase, (label, _) in PHASES.items()}
    labels["other"] = "other statements"
    labels["python"] = "Python between the statements (hashing files, listing folders, results)"
    lines = [
        f"Machine: {host['cpus']} cores, {host['memory_gb']} GB, Python {host['python']}.",
        "",
        f"Inbox: {ingest['files']} files, {ingest['rows_in']:,} rows. DuckDB alone loads it into a table per file "
        f"in {alone['seconds']} s ({alone['rows']:,} rows). The ingest stage of a first load takes {total:.2f} s:",
        "",
        "| part | s | share |",
        "|---|---:|---:|",
    ]
    parts = [(labels[p], s) for p, s in ingest["phases_s"].items() if s]
    parts += [
        ("Great Expectations' five raw suites on every row", ingest["expectation_suites_s"]),
        ("the final checkpoint", ingest["checkpoint_s"]),
    ]
    for label, s in parts:
        lines.append(f"| {label} | {s} | {100 * s / total:.0f}% |")
    lines += [
        "",
        f"The ingestion used {ingest['cpu_seconds']} s of CPU in {ingest['seconds']} s, one core of the machine's "
        f"{host['cpus']}: its files are read one after another, and DuckDB runs a statement on one thread per "
        "row group of 122,880 rows, more than most files hold.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--inbox", type=Path, default=WORK / "1000000" / "inbox", help="an inbox (default: the 1M one bench.run made)"
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: run here, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.inbox)))
        return
    if not args.inbox.is_dir():
        sys.exit(f"{args.inbox}: no inbox; `python -m bench.run --records 1000000` generates it")
    result = in_fresh_process(["bench.ingest_breakdown", "--one", "--inbox", str(args.inbox)], "ingest")
    host = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps({"machine": host, **result}, indent=2) + "\n")
    (RESULTS / "ingest.md").write_text(to_markdown(result, host))
    print((RESULTS / "ingest.md").read_text())


if __name__ == "__main__":
    main()
