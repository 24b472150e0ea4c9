"""Right of access and portability (GDPR Art. 15 and 20): everything held on a subject, as JSON.

The subject is found exactly as erasure finds them (:func:`consent.erasure.find_subject`), and every table
is read with the erasure map's own predicate, so what an access request returns is what an erasure would
remove: the raw rows of every source with the file, batch and row they came from, the profile, the
consent history (events as received, the ledger, the current state), rejected rows that carry the
subject, restrictions, identity links and id changes, and the exports the subject appeared in. Nothing
of other customers: a household member sharing the subject's landline is not the subject, and a request
by an identifier that reaches several customers (a shared landline or mailbox) is refused before it is
registered, as restriction refuses it (:func:`consent.restriction.refuse_several_customers`); the officer
names the customer by ``--customer-id``.

The file is written readable by its owner only (0600), atomically. Each document written is registered
(``access_documents``: request, file, time, counts; ``access_document_members``: the customer ids it
covers), so that a later erasure of the subject lists the copies made of their data for the officer to
delete (:func:`consent.erasure.access_documents_of_subject`), before it deletes those rows too.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from cdp.config import Settings
from cdp.errors import CdpError, check_output_file
from cdp.store import RECORD_SOURCES, connect, raw_table, transaction
from cdp.suppression import store_secret
from consent import register
from consent.erasure import (
    CONSENT_TABLES,
    SHARED_CONSENT,
    SUBJECT_UNITS,
    Rule,
    Scope,
    Subject,
    drop_scope,
    exports_of_subject,
    find_subject,
    present_rules,
    refuse_formerly_shared,
    refuse_unknown_customer_id,
    store_schema,
    subject_values,
)
from consent.export import private_file
from consent.restriction import refuse_several_customers

FORMAT_VERSION = 1

#: Where each mapped table goes in the document; tables not named here go under ``other``.
SECTIONS: dict[str, tuple[str, ...]] = {
    "profiles": ("customer_profiles",),
    "consent_received": ("raw_consent",),
    "consent_ledger": ("consent_events",),
    "consent_state": ("consent_state",),
    "quarantined_rows": ("quarantine",),
    "restrictions": ("restrictions",),
    "identity_links": ("customer_source_records",),
    "identity_history": ("customer_id_history",),
    "identity_edges": ("identity_edges",),
    "standardised_records": ("stg_records",),
    "standardised_consent": ("stg_consent",),
}
#: Internal lookups that add nothing a person would read (a phone spelling and its E.164 form, the members of
#: exports, earlier access documents, which ``exports`` and the register of requests already say).
SKIPPED = ("phone_map", "export_members", "access_documents", "access_document_members")

#: The access documents written (request, file or where it was delivered, time, counts) and the customers each
#: covered. An erasure of the subject lists them on its receipt, then deletes both (a file name the officer
#: chose may name the subject).
ACCESS_DDL = [
    """CREATE TABLE IF NOT EXISTS access_documents (
        request_id VARCHAR PRIMARY KEY, file VARCHAR, written_at TIMESTAMP, customers BIGINT, records BIGINT)""",
    "CREATE TABLE IF NOT EXISTS access_document_members (request_id VARCHAR, customer_id VARCHAR)",
]


@dataclass
class AccessResult:
    request_id: str
    path: Path
    customers: int
    records: int
    counts: dict[str, int]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    rel = con.execute(sql)
    names = [d[0] for d in rel.description]
    types = [str(d[1]) for d in rel.description]
    out = []
    for row in rel.fetchall():
        item = {}
        for name, kind, value in zip(names, types, row, strict=True):
            if kind == "JSON" and isinstance(value, str):
                with contextlib.suppress(ValueError):  # not JSON after all: kept as the text stored
                    value = json.loads(value)
            item[name] = _plain(value)
        out.append(item)
    return out


def collect(
    con: duckdb.DuckDBPyConnection,
    subject: Subject,
    settings: Settings,
    request_id: str,
    scope: Scope | None = None,
) -> dict[str, Any]:
    """The access document for ``subject`` (a dict ready for JSON). ``scope``: what :func:`find_subject`
    already found for ``subject`` on ``con`` (its scope tables are read as they are); found here if not given."""
    rules = present_rules(con)
    if scope is None:
        scope = find_subject(con, subject, settings.default_region)
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "request_id": request_id,
        "generated_at": register.utcnow().isoformat(),
        "customer_ids": scope.customers,
        "former_customer_ids": scope.former_customers,
        "records": {},
    }
    placed = set(SKIPPED)

    schema = store_schema(con)

    def select(table: str) -> str:
        own = f"SELECT {_columns(table, rules[table])} FROM {table} WHERE {rules[table].where}"
        if table not in CONSENT_TABLES:
            return own
        # The subject's events that also name others (kept for them at an erasure): with the others' values hidden.
        masked = _masked(
            {c: f"{c} IS NULL OR {holds}" for c, holds in sorted(subject_values(table, schema[table]).items())},
            OTHER_IDENTIFIER,
        )
        return f"{own} UNION ALL BY NAME SELECT {masked} FROM {table} WHERE consent_id IN {SHARED_CONSENT}"

    for source in RECORD_SOURCES:
        table = raw_table(source)
        placed.add(table)
        if table in rules:
            doc["records"][source] = _rows(
                con, f"SELECT * FROM {table} WHERE {rules[table].where} ORDER BY batch_id, row_number"
            )
    for section, tables in SECTIONS.items():
        doc[section] = []
        for table in tables:
            placed.add(table)
            if table in rules:
                doc[section] += _rows(con, select(table))
    doc["exports"] = [_plain(e) for e in exports_of_subject(con)]
    doc["other"] = {table: _rows(con, select(table)) for table in rules if table not in placed}
    return doc


#: In place of a unit that is not the subject's, on a pair that joins one of theirs to it (a model pair
#: scored below the threshold, say): the score concerns the subject, the other record's key does not.
OTHER_UNIT = "(another customer's record)"
#: In place of an identifier that is not the subject's, on a consent event naming them and someone else.
OTHER_IDENTIFIER = "(another person's identifier)"


def _columns(table: str, rule: Rule) -> str:
    """The columns of ``table`` as the document shows them: every one, except that a pair of units names only
    the subject's units (the other unit's id embeds another person's CRM id, cookie or device id)."""
    pair = [c for c in rule.columns if c in ("unit_id_l", "unit_id_r")]
    return _masked({c: f"{c} IN {SUBJECT_UNITS}" for c in pair}, OTHER_UNIT)


def _masked(shown: dict[str, str], placeholder: str) -> str:
    """Every column, each of ``shown``'s columns as ``placeholder`` where its SQL condition does not hold."""
    if not shown:
        return "*"
    text = placeholder.replace("'", "''")
    cases = ", ".join(f"CASE WHEN {keep} THEN {c} ELSE '{text}' END AS {c}" for c, keep in shown.items())
    return f"* REPLACE ({cases})"


def _register_document(
    con: duckdb.DuckDBPyConnection, request_id: str, where: str, doc: dict[str, Any], records: int
) -> None:
    """Note the document and the customers it covers (current and former ids), in the caller's transaction."""
    for ddl in ACCESS_DDL:
        con.execute(ddl)
    customers = sorted(set(doc["customer_ids"]) | set(doc["former_customer_ids"]))
    con.execute(
        "INSERT INTO access_documents VALUES (?, ?, ?, ?, ?)",
        [request_id, where, register.utcnow(), len(doc["customer_ids"]), records],
    )
    if customers:  # a subject the store does not hold gets a document too, naming nobody
        con.executemany("INSERT INTO access_document_members VALUES (?, ?)", [(request_id, c) for c in customers])


def write_private_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically, readable by its owner only (:func:`consent.export.private_file`)."""
    with private_file(Path(path), "access document") as fh:
        fh.write(json.dumps(doc, indent=2, ensure_ascii=False).encode() + b"\n")


def access(
    settings: Settings,
    subject: Subject,
    out: Path,
    con: duckdb.DuckDBPyConnection | None = None,
    actor: str | None = None,
    delivered: str | None = None,
) -> AccessResult:
    """Answer an access request: write the subject's document to ``out`` and register the request.

    ``delivered``: where the document went, for the register of access documents, when ``out`` is not where it
    stays (the web console hands it to the officer's browser from a temporary file); else ``out`` itself.

    ``out`` is checked before anything is registered (and must be a new file: written over, another subject's
    document would be gone while the register still listed it as theirs), and the store must exist (a mistyped
    ``--db`` is refused, not created). An identifier that reaches several customers is refused, also before anything
    is registered or written: the document would hand one person the others' data. Registering the request,
    collecting the document and writing it are one transaction: when the document cannot be written, the register is
    left as it was. A privacy officer reads the register as "what was asked and what was answered": a request opened
    only by this failed attempt was answered with nothing, so it is not recorded (running the command again answers
    it), while a request received earlier (say through the web console) stays open, as it is still owed. Marking it
    failed would tell the officer it was dealt with; leaving a new one open would count an attempt as a request.
    """
    con = con or connect(settings.db_path, create=False)
    try:
        check_output_file(Path(out), "access document")
        if delivered is None and Path(out).exists():  # another subject's document, or a file of the officer's
            raise CdpError(f"{out}: exists; an access document is written to a new file (remove it or choose another)")
        register.ensure_register_schema(con)
        secret = store_secret(con, settings.secret_path)
        present_rules(con)
        refuse_unknown_customer_id(con, subject, nothing_to="show", instead="ask")
        scope = find_subject(con, subject, settings.default_region)
        refuse_several_customers(scope)
        refuse_formerly_shared(con, subject, secret)
        with transaction(con):
            request_id = register.open_request(con, "access", subject.hash(secret))
            doc = collect(con, subject, settings, request_id, scope)
            write_private_json(out, doc)
            counts = {source: len(rows) for source, rows in doc["records"].items()}
            for section in SECTIONS:
                counts[section] = len(doc[section])
            counts["exports"] = len(doc["exports"])
            records = sum(len(rows) for rows in doc["records"].values())
            _register_document(con, request_id, delivered or str(Path(out).resolve()), doc, records)
            register.complete_request(con, request_id, records_affected=records)
            register.audit(
                con, "access", request_id, f"access document written: {len(doc['customer_ids'])} customers",
                records, actor,
            )  # fmt: skip
        return AccessResult(request_id, Path(out), len(doc["customer_ids"]), records, counts)
    finally:
        drop_scope(con)
        con.close()
