"""The register of privacy requests and the audit log.

``privacy_requests`` -- one row per request (erasure, access, restriction, objection, lifting a
restriction): when it was received, when it is due (one calendar month later, GDPR Art. 12(3)), when it
was completed, its status and how many records it touched. It never holds a raw identifier: at most
``subject_hash``, the installation's HMAC of the normalised identifier the request named, so that a
dry run and the erasure that follows are one request.

``audit_log`` -- one row per privacy action and per export: who, when, what, which request, how many.
``detail`` is free text written by the platform, never by the user, and never carries identifiers.
(Column ``"at"`` needs quoting in SQL: AT is a keyword in DuckDB 2.)

>>> import duckdb
>>> con = duckdb.connect()
>>> rid = open_request(con, "access")
>>> complete_request(con, rid, records_affected=3)
>>> [r["status"] for r in list_requests(con)]
['completed']
"""

from __future__ import annotations

import getpass
import secrets
from datetime import UTC, datetime
from typing import Any

import duckdb

from cdp.store import ensure_table

KINDS = ("erasure", "access", "restriction", "objection", "lift_restriction")

#: Open: received, nothing done yet (e.g. after a dry run). Rewrite pending: rows erased, the database
#: file still to be rewritten (the next erasure finishes it). Completed: done.
OPEN, REWRITE_PENDING, COMPLETED = "open", "rewrite_pending", "completed"
#: How an open request ends without being carried out (:func:`close_request`): refused (the subject could
#: not be told apart from others or verified, or the request is manifestly unfounded: GDPR Art. 12(4)-(6),
#: the subject to be told why), or withdrawn by the subject. Either keeps its row and its dates.
REFUSED, WITHDRAWN = "refused", "withdrawn"
CLOSING_OUTCOMES = (REFUSED, WITHDRAWN)

REGISTER_DDL = [
    """CREATE TABLE IF NOT EXISTS privacy_requests (
        request_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, received_at TIMESTAMP NOT NULL,
        due_at TIMESTAMP NOT NULL, completed_at TIMESTAMP, status VARCHAR NOT NULL,
        records_affected BIGINT, subject_hash VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS audit_log (
        "at" TIMESTAMP NOT NULL, actor VARCHAR, action VARCHAR NOT NULL, request_id VARCHAR,
        detail VARCHAR, count BIGINT)""",
]


def utcnow() -> datetime:
    """Now in UTC, naive (the store keeps every time as a UTC ``TIMESTAMP``)."""
    return datetime.now(UTC).replace(tzinfo=None)


def ensure_register_schema(con: duckdb.DuckDBPyConnection) -> None:
    for ddl in REGISTER_DDL:
        ensure_table(con, ddl)


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "unknown"


def new_request_id(now: datetime | None = None) -> str:
    """``PR-YYYYMMDD-xxxxxx``: sortable by day, unguessable, and free of personal data."""
    return f"PR-{(now or utcnow()):%Y%m%d}-{secrets.token_hex(3)}"


def open_request(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    subject_hash: str | None = None,
    now: datetime | None = None,
) -> str:
    """Register a request and return its id; an open request of the same kind for the same subject is
    reused, so a dry run and the erasure confirmed after it share one id and one received date."""
    if kind not in KINDS:
        raise ValueError(f"unknown request kind {kind!r}")
    ensure_register_schema(con)
    if subject_hash is not None:
        found = con.execute(
            """SELECT request_id FROM privacy_requests
               WHERE kind = ? AND subject_hash = ? AND status = ? ORDER BY received_at LIMIT 1""",
            [kind, subject_hash, OPEN],
        ).fetchall()
        if found:
            return str(found[0][0])
    now = now or utcnow()
    request_id = new_request_id(now)
    con.execute(
        """INSERT INTO privacy_requests
           VALUES (?, ?, ?, ?::TIMESTAMP + INTERVAL 1 MONTH, NULL, ?, NULL, ?)""",
        [request_id, kind, now, now, OPEN, subject_hash],
    )
    return request_id


def set_status(
    con: duckdb.DuckDBPyConnection, request_id: str, status: str, records_affected: int | None = None
) -> None:
    con.execute(
        """UPDATE privacy_requests SET status = ?, records_affected = coalesce(?, records_affected)
           WHERE request_id = ?""",
        [status, records_affected, request_id],
    )


def complete_request(
    con: duckdb.DuckDBPyConnection,
    request_id: str,
    records_affected: int | None = None,
    now: datetime | None = None,
    status: str = COMPLETED,
) -> None:
    """The request ends with ``status`` (completed, or an outcome of :func:`close_request`), ``now``."""
    con.execute(
        """UPDATE privacy_requests
           SET status = ?, completed_at = ?, records_affected = coalesce(?, records_affected)
           WHERE request_id = ?""",
        [status, now or utcnow(), records_affected, request_id],
    )


def close_request(con: duckdb.DuckDBPyConnection, request_id: str, outcome: str, now: datetime | None = None) -> None:
    """End an open request that will not be carried out: ``outcome`` is one of :data:`CLOSING_OUTCOMES`,
    and the day it was closed is its completion date (so that the register shows whether the subject had
    an answer within the month). Only an open request can be closed: an erasure whose rewrite is pending
    must be finished, and a completed request stays completed."""
    from cdp.errors import CdpError

    if outcome not in CLOSING_OUTCOMES:
        raise CdpError(f"outcome {outcome!r}: expected one of {', '.join(CLOSING_OUTCOMES)}")
    ensure_register_schema(con)
    found = con.execute("SELECT status FROM privacy_requests WHERE request_id = ?", [request_id]).fetchall()
    if not found:
        raise CdpError(f"request {request_id!r}: no such request in the register (see `cdp privacy requests`)")
    if found[0][0] != OPEN:
        raise CdpError(f"request {request_id}: is {found[0][0]}; only an open request can be closed")
    complete_request(con, request_id, now=now, status=outcome)
    audit(con, "close_request", request_id, f"closed as {outcome}", None, now=now)


def audit(
    con: duckdb.DuckDBPyConnection,
    action: str,
    request_id: str | None = None,
    detail: str = "",
    count: int | None = None,
    actor: str | None = None,
    now: datetime | None = None,
) -> None:
    """Append one line to the audit log. ``detail`` must not carry identifiers (table names, purposes,
    segment names and counts are fine). Exports call this too (action ``export``)."""
    ensure_register_schema(con)
    con.execute(
        "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?)",
        [now or utcnow(), actor or _actor(), action, request_id, detail, count],
    )


def list_requests(con: duckdb.DuckDBPyConnection, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every request, oldest first, with ``overdue``: still not completed past its due date, or
    completed after it."""
    ensure_register_schema(con)
    rows = con.execute(
        """SELECT request_id, kind, received_at, due_at, completed_at, status, records_affected,
                  (completed_at IS NULL AND due_at < ?) OR (completed_at > due_at) AS overdue
           FROM privacy_requests ORDER BY received_at, request_id""",
        [now or utcnow()],
    ).fetchall()
    names = ["request_id", "kind", "received_at", "due_at", "completed_at", "status", "records_affected"]
    return [{**dict(zip(names, row[:-1], strict=True)), "overdue": bool(row[-1])} for row in rows]


def pending_rewrites(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Erasures whose rows are gone but whose database-file rewrite did not finish."""
    ensure_register_schema(con)
    rows = con.execute(
        "SELECT request_id FROM privacy_requests WHERE status = ? ORDER BY received_at", [REWRITE_PENDING]
    ).fetchall()
    return [str(r[0]) for r in rows]
