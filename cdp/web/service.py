"""What the console and the API do, as plain functions over the store: the same ``consent/`` and ``identity/``
functions the CLI calls (``cdp segments``, ``cdp profile show``, ``cdp privacy``), never a second code path.

The store is opened per call and closed at once, under one process-wide lock: erasure replaces the DuckDB
file, and DuckDB refuses a second connection with another configuration to a file already open in the
process. A store held by another process (a pipeline run) raises :class:`cdp.errors.StoreBusyError`, which
the app answers with 503. Every action is written to ``audit_log`` with the console user as actor
(``web:<name>``); audit details carry counts, purposes, segment names and request ids, never identifiers.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from cdp.config import PURPOSE_CHANNEL, PURPOSES, Settings
from cdp.errors import CdpError
from cdp.store import connect, table_exists
from cdp.users import User
from consent.segments import dump_yaml, where_text

#: Request kinds the intake takes, and the identifier kinds a subject is named by.
INTAKE_KINDS = ("erasure", "access", "restriction", "objection")
SUBJECT_KINDS = ("email", "phone", "customer_id")
EXPORT_FORMATS = ("csv", "parquet")

_LOCK = threading.RLock()


class NotFound(CdpError):
    """The thing asked for does not exist (answered with 404)."""


@contextmanager
def store(settings: Settings, write: bool = False, as_of_now: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """The store, read-only unless ``write``; ``as_of_now``: with consent state brought up to date first
    (:func:`consent.state.connect_as_of_now`), for counts that must be an export's."""
    from consent.state import connect_as_of_now

    with _LOCK:
        con = connect_as_of_now(settings.db_path) if as_of_now else connect(settings.db_path, read_only=not write)
        try:
            yield con
        finally:
            con.close()


def audit(
    settings: Settings,
    user: User,
    action: str,
    detail: str = "",
    count: int | None = None,
    request_id: str | None = None,
) -> None:
    """One line in the privacy owner's ``audit_log`` (``consent.register.audit``) naming the console user."""
    from consent import register

    with store(settings, write=True) as con:
        register.audit(con, action, request_id, detail, count, actor=f"web:{user.name}")


def audit_lines(settings: Settings, request_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    from consent import register

    with store(settings, write=True) as con:
        register.ensure_register_schema(con)
        where, params = ("WHERE request_id = ?", [request_id]) if request_id else ("", [])
        rel = con.execute(
            f'SELECT "at", actor, action, request_id, detail, count FROM audit_log {where} '  # where: a constant
            f'ORDER BY "at" DESC LIMIT {int(limit)}',
            params,
        )
        names = [d[0] for d in rel.description]
        return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


# -- segments (marketer) -------------------------------------------------------------------------------
def list_segments(settings: Settings) -> list[dict[str, Any]]:
    """Every segment with its size before consent and, per purpose, how many may be contacted."""
    from consent.segments import SegmentError, load_segments, segment_counts
    from consent.state import events_due

    found = load_segments(settings.segments_dir)
    out: list[dict[str, Any]] = []
    with store(settings, as_of_now=True) as con:
        pending = events_due(con)  # 0 unless the store could not be brought to now (another process has it)
        for name, seg in found.items():
            if isinstance(seg, SegmentError):
                out.append({"name": name, "error": str(seg)})
                continue
            row: dict[str, Any] = {
                "name": seg.name, "description": seg.description, "where": where_text(seg.where),
                "fields": list(seg.fields), "activations": list(seg.activations), "error": None,
                "consent_events_pending": pending,
            }  # fmt: skip
            try:
                row["customers"], counts = segment_counts(con, seg)
                row["allowed"] = {p: c["allowed"] for p, c in counts.items()}
            except SegmentError as exc:
                row["error"] = str(exc)
            out.append(row)
    return out


def load_draft(doc: dict[str, Any]):  # type: ignore[no-untyped-def]  # -> consent.segments.Segment
    """Validate a segment typed in the editor exactly as a segment file is validated."""
    from consent.segments import parse_segment

    name = doc.get("name")
    safe = name if isinstance(name, str) and name.replace("_", "").isalnum() else "draft"
    return parse_segment(doc, f"segment {safe}")


def preview(settings: Settings, segment: Any, purposes: tuple[str, ...] = PURPOSES) -> dict[str, Any]:
    """Customers before consent and, per purpose, allowed and left out by reason (counts only)."""
    from consent import enforce
    from consent.segments import segment_counts

    for p in purposes:
        enforce.check_purpose(p)
    from consent.state import events_due

    with store(settings, as_of_now=True) as con:
        customers, counts = segment_counts(con, segment, purposes)
        pending = events_due(con)  # 0 unless the store could not be brought to now (another process has it)
    return {
        "segment": segment.name,
        "where": where_text(segment.where),
        "customers": customers,
        "purposes": {p: {"channel": PURPOSE_CHANNEL[p], **c} for p, c in counts.items()},
        "reasons": list(enforce.reasons()),
        "consent_events_pending": pending,
    }


def get_segment(settings: Settings, name: str):  # type: ignore[no-untyped-def]  # -> Segment
    from consent.segments import get_segment as find

    try:
        return find(settings.segments_dir, name)
    except CdpError as exc:
        if "no segment named" in str(exc):
            raise NotFound(str(exc)) from None
        raise


def save_segment(settings: Settings, draft: dict[str, Any]) -> Path:
    """Write a validated draft to ``<segments_dir>/<name>.yaml`` (a new segment, or the same file edited)."""
    from consent.segments import ALL_CUSTOMERS, SegmentError, load_segments

    segment = load_draft(draft)
    if segment.name == ALL_CUSTOMERS:
        raise SegmentError(f"{ALL_CUSTOMERS} is built in and cannot be changed")
    path = settings.segments_dir / f"{segment.name}.yaml"
    existing = load_segments(settings.segments_dir).get(segment.name)
    existing_file = getattr(existing, "file", None)  # None for a file that does not load (it is replaced)
    if existing_file is not None and existing_file != str(path):
        raise SegmentError(f"segment {segment.name} is already defined in {Path(existing_file).name}")
    settings.segments_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dump_yaml(segment.document()))
    tmp.replace(path)
    return path


def export(settings: Settings, name: str, purpose: str, fmt: str):  # type: ignore[no-untyped-def]
    """``consent.export.export_segment`` into ``<home>/exports/web/``; returns its ExportResult."""
    from consent import enforce
    from consent.export import export_segment

    enforce.check_purpose(purpose)
    if fmt not in EXPORT_FORMATS:
        raise CdpError(f"format {fmt!r}: expected csv or parquet")
    get_segment(settings, name)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    out = settings.exports_dir / "web" / f"{name}-{purpose}-{stamp}.{fmt}"
    with store(settings, write=True) as con:
        return export_segment(con, settings, name, purpose, out)


def export_register(settings: Settings, limit: int = 200) -> list[dict[str, Any]]:
    from consent.export import ensure_register

    with store(settings, write=True) as con:
        ensure_register(con)
        rel = con.execute(
            "SELECT export_id, segment, purpose, exported_at, row_count, file, file_hash FROM export_register "
            f"ORDER BY exported_at DESC LIMIT {int(limit)}"
        )
        names = [d[0] for d in rel.description]
        return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


# -- privacy (privacy officer) -------------------------------------------------------------------------
def subject(settings: Settings, by: str, value: str):  # type: ignore[no-untyped-def]  # -> Subject
    from consent.erasure import Subject

    if by not in SUBJECT_KINDS:
        raise CdpError(f"identify the subject by one of {', '.join(SUBJECT_KINDS)}")
    if not value or not value.strip() or len(value) > 320:
        raise CdpError(f"{by}: give a value (at most 320 characters)")
    options = {k: (value if k == by else None) for k in SUBJECT_KINDS}
    return Subject.from_options(options["email"], options["phone"], options["customer_id"], settings.default_region)


def erasure_dry_run(settings: Settings, subj: Any):  # type: ignore[no-untyped-def]  # -> ErasureReport
    from consent import erasure

    with _LOCK:
        return erasure.erase(settings, subj, dry_run=True)


def erase(settings: Settings, subj: Any, request_id: str):  # type: ignore[no-untyped-def]  # -> ErasureReport
    """Erase after a dry run: ``request_id`` must be the open erasure request registered for this subject
    (``consent.register`` keys requests by the subject's keyed hash), so a confirmation cannot be replayed
    for another subject or after the request was completed."""
    from cdp.suppression import store_secret
    from consent import erasure, register

    with _LOCK:
        with store(settings, write=True) as con:
            register.ensure_register_schema(con)
            found = con.execute(
                """SELECT count(*) FROM privacy_requests
                   WHERE request_id = ? AND kind = 'erasure' AND status = ? AND subject_hash = ?""",
                [request_id, register.OPEN, subj.hash(store_secret(con, settings.secret_path))],
            ).fetchall()[0][0]
        if not found:
            raise CdpError(
                f"request {request_id} is not an open erasure request for this subject; run the dry run again"
            )
        report = erasure.erase(settings, subj, dry_run=False)
        if report.request_id != request_id:  # open_request reuses the oldest open request of the subject
            raise CdpError(f"erasure ran as request {report.request_id}, not {request_id}")
        return report


def plan_summary(report: Any) -> dict[str, Any]:
    """An erasure dry run or receipt as plain data: counts, internal customer ids, tables, exports."""
    from consent.erasure import formerly_shared_message

    plan, scope = report.plan, report.plan.scope
    return {
        "request_id": report.request_id,
        "dry_run": report.dry_run,
        "customers": list(scope.customers),
        "former_customers": list(scope.former_customers),
        "seed_customers": scope.seed_customers,
        # Erasure requests whose subject shared the identifier given: it now reaches only the others, and
        # the erasure by it will be refused (request ids only, nobody named).
        "formerly_shared": list(plan.formerly_shared),
        "warning": formerly_shared_message(
            plan.formerly_shared, "the customers above", "erase by customer id after checking"
        )
        if plan.formerly_shared
        else None,
        "records_by_source": dict(scope.records_by_source),
        "identifier_types": {k: dict(v) for k, v in scope.identifier_types.items()},
        "consent_events": scope.consent_events,
        "quarantined_rows": scope.quarantined_rows,
        "extra_values": scope.extra_values,
        "shared_consent_events": scope.shared_consent_events,
        "table_counts": {t: n for t, n in plan.table_counts.items() if n},
        "total_rows": plan.total,
        "suppress": dict(plan.suppress),
        "exports": [
            {
                k: (str(v) if v is not None else None)
                for k, v in e.items()
                if k in ("export_id", "exported_at", "segment", "purpose", "subject_customers")
            }
            for e in plan.exports
        ],
        "access_documents": [
            {
                "request_id": d["request_id"],
                "written_at": str(d["written_at"]),
                "file": d["file"],
                "present": d["present"],
            }
            for d in plan.access_documents
        ],
        "deleted": {t: n for t, n in report.deleted.items() if n},
        "suppressed": dict(report.suppressed),
        "rewritten": report.rewritten,
        "file_bytes": report.file_bytes,
    }


def access(settings: Settings, subj: Any) -> tuple[Any, bytes]:
    """``consent.access.access`` into a private temporary file; returns the result and the JSON bytes
    (the document is handed to the officer's browser, not kept on the server)."""
    from consent.access import access as run_access

    with tempfile.TemporaryDirectory(prefix="cdp-access-") as tmp, _LOCK:
        out = Path(tmp) / "access.json"
        result = run_access(settings, subj, out, delivered="downloaded from the web console")
        return result, out.read_bytes()


def restrict(settings: Settings, subj: Any, kind: str):  # type: ignore[no-untyped-def]
    from consent.restriction import restrict as run_restrict

    with _LOCK:
        return run_restrict(settings, subj, kind)


def requests(settings: Settings) -> list[dict[str, Any]]:
    from consent import register

    with store(settings, write=True) as con:
        return register.list_requests(con)


def request_detail(settings: Settings, request_id: str) -> dict[str, Any]:
    found = [r for r in requests(settings) if r["request_id"] == request_id]
    if not found:
        raise NotFound(f"no request {request_id!r}")
    return {**found[0], "audit": audit_lines(settings, request_id)}


# -- customers (privacy officer) -----------------------------------------------------------------------
def find_customers(settings: Settings, by: str, value: str) -> list[str]:
    from identity.profiles import find_customers as find

    if by not in SUBJECT_KINDS:
        raise CdpError(f"look customers up by one of {', '.join(SUBJECT_KINDS)}")
    if not value or not value.strip() or len(value) > 320:
        raise CdpError(f"{by}: give a value (at most 320 characters)")
    with store(settings) as con:
        return find(con, **{by: value}, region=settings.default_region)  # type: ignore[arg-type]  # by is checked


def _frame_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and arrays
        return False


def customer_view(settings: Settings, customer_id: str) -> dict[str, Any]:
    """One customer: the profile and its provenance (``identity.profiles.profile_detail``), linked records,
    consent per purpose with the export decision (``consent.enforce``), the consent history and why the
    records were merged (the subject's rows as ``consent.access.collect`` finds them)."""
    from consent import enforce
    from consent.access import collect
    from consent.erasure import Subject, drop_scope
    from identity.profiles import profile_detail

    with store(settings, write=True) as con:
        if not table_exists(con, "customer_profiles"):
            raise CdpError("no customer profiles yet; run `cdp run --inbox DIR` first")
        if not con.execute("SELECT count(*) FROM customer_profiles WHERE customer_id = ?", [customer_id]).fetchall()[0][
            0
        ]:
            raise NotFound(f"no customer {customer_id!r}")
        detail = profile_detail(con, customer_id)
        records = detail.pop("records")
        assert isinstance(records, pd.DataFrame)  # profile_detail returns a frame here
        state = {}
        if table_exists(con, "consent_state"):
            rows = con.execute(
                "SELECT purpose, status, updated_at, source, via FROM consent_state WHERE customer_id = ?",
                [customer_id],
            ).fetchall()
            state = {r[0]: r[1:] for r in rows}
        frame = pd.DataFrame({"customer_id": [customer_id]})
        consent = []
        for p in PURPOSES:
            status, since, source, via = state.get(p, ("no consent", None, None, None))
            why = enforce.decide(con, p, frame)["excluded_because"].iloc[0]
            consent.append({
                "purpose": p, "status": status, "since": since, "source": source, "via": via,
                "may_contact": _missing(why), "excluded_because": None if _missing(why) else why,
            })  # fmt: skip
        try:
            doc = collect(con, Subject("customer_id", customer_id), settings, request_id="")
        finally:
            drop_scope(con)
    units = sorted({str(r["unit_id"]) for r in doc.get("identity_links", []) if r.get("unit_id")})
    edges = [
        {k: e.get(k) for k in ("unit_id_l", "unit_id_r", "evidence", "rule", "match_weight")}
        for e in doc.get("identity_edges", [])
    ]
    profile = {k: (None if _missing(v) else v) for k, v in detail.items()}
    return {
        "customer_id": customer_id,
        "profile": profile,
        "records": _frame_rows(records),
        "consent": consent,
        "consent_history": sorted(doc.get("consent_ledger", []), key=lambda e: str(e.get("event_time"))),
        "units": units,
        "edges": sorted(edges, key=lambda e: (str(e["evidence"]), str(e["unit_id_l"]), str(e["unit_id_r"]))),
        "id_history": doc.get("identity_history", []),
    }


# -- pictures ------------------------------------------------------------------------------------------
def chart_data(settings: Settings, requests: bool = True) -> dict[str, Any]:
    """Counts behind the console's charts: cluster sizes, match weights, consent coverage, and (``requests``:
    for the privacy roles only) privacy requests by day."""
    from consent import register

    out: dict[str, Any] = {"clusters": [], "weights": [], "consent": [], "requests": [], "customers": 0}
    with store(settings, write=True) as con:
        if table_exists(con, "customer_source_records"):
            out["clusters"] = con.execute(
                """SELECT least(n, 10) AS size, count(*) FROM (
                       SELECT customer_id, count(DISTINCT unit_id) AS n FROM customer_source_records GROUP BY 1)
                   GROUP BY 1 ORDER BY 1"""
            ).fetchall()
        if table_exists(con, "identity_edges"):
            out["weights"] = [
                float(r[0])
                for r in con.execute(
                    "SELECT match_weight FROM identity_edges WHERE match_weight IS NOT NULL AND isfinite(match_weight)"
                ).fetchall()
            ]
        if table_exists(con, "customer_profiles"):
            out["customers"] = int(con.execute("SELECT count(*) FROM customer_profiles").fetchall()[0][0])
        if table_exists(con, "consent_state"):
            got = (
                dict(
                    ((r[0], r[1]), int(r[2]))
                    for r in con.execute(
                        """SELECT purpose, status, count(*) FROM consent_state
                       WHERE customer_id IN (SELECT customer_id FROM customer_profiles) GROUP BY 1, 2"""
                    ).fetchall()
                )
                if out["customers"]
                else {}
            )
            for p in PURPOSES:
                granted, withdrawn = got.get((p, "granted"), 0), got.get((p, "withdrawn"), 0)
                out["consent"].append((p, granted, withdrawn, max(out["customers"] - granted - withdrawn, 0)))
        if not requests:
            return out
        register.ensure_register_schema(con)
        out["requests"] = con.execute(
            "SELECT received_at::DATE AS day, kind, count(*) FROM privacy_requests GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    return out
