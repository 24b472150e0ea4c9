"""Restriction of processing (GDPR Art. 18) and objection to direct marketing (Art. 21).

Both keep every record and keep the customer out of every export and segment: a row in
``restrictions(customer_id, request_id, kind, created_at, lifted_at)`` with ``lifted_at IS NULL`` is an
active restriction, and :mod:`consent.enforce` excludes those customers before it looks at consent.
``kind`` is ``restriction`` or ``objection``. Lifting sets ``lifted_at``; rows are never rewritten
otherwise, so the table is also the history.

Customer ids can change when identities are re-resolved; :func:`carry_restrictions` follows
``customer_id_history`` so that an active restriction moves with the customer (the pipeline calls it
after resolving identities). A restriction reaches each new id once: lifted there, it is not carried again
from the id it came from (whose row stays as history, lifted with it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import duckdb

from cdp.config import Settings
from cdp.errors import CdpError
from cdp.store import connect, ensure_table, table_exists, transaction
from cdp.suppression import store_secret
from consent import register
from consent.erasure import Scope, Subject, drop_scope, find_subject, refuse_formerly_shared

KINDS = ("restriction", "objection")

RESTRICTIONS_DDL = """CREATE TABLE IF NOT EXISTS restrictions (
    customer_id VARCHAR, request_id VARCHAR, kind VARCHAR, created_at TIMESTAMP, lifted_at TIMESTAMP)"""


@dataclass
class RestrictionResult:
    request_id: str
    customers: int
    changed: int


def ensure_restrictions(con: duckdb.DuckDBPyConnection) -> None:
    ensure_table(con, RESTRICTIONS_DDL)


def active_restrictions(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    """(customer_id, kind, request_id) of every active restriction."""
    ensure_restrictions(con)
    return [
        (str(c), str(k), str(r))
        for c, k, r in con.execute(
            "SELECT customer_id, kind, request_id FROM restrictions WHERE lifted_at IS NULL ORDER BY 1, 2"
        ).fetchall()
    ]


def refuse_several_customers(scope: Scope) -> None:
    """Refuse a request whose identifier reaches several customers (a household landline, a family mailbox):
    answering it would act on, or hand over, people who did not ask (GDPR Art. 15(4)). The officer names the
    customer by ``--customer-id``. Called before the request is registered; names nobody, only the count."""
    if scope.seed_customers > 1:
        raise CdpError(
            f"the identifier given links {scope.seed_customers} customers (shared by a household?); "
            "name the customer with --customer-id"
        )


def _customers(con: duckdb.DuckDBPyConnection, subject: Subject, settings: Settings, secret: bytes) -> Scope:
    scope = find_subject(con, subject, settings.default_region)
    drop_scope(con)
    refuse_several_customers(scope)
    refuse_formerly_shared(con, subject, secret)
    if not scope.customers:
        raise CdpError("no customer found for the identifier given")
    return scope


def _recorded(
    settings: Settings,
    subject: Subject,
    request_kind: str,
    change: Callable[[duckdb.DuckDBPyConnection, Scope, str, datetime], tuple[int, str]],
    con: duckdb.DuckDBPyConnection | None,
    now: datetime | None,
    actor: str | None,
) -> RestrictionResult:
    """Open a ``request_kind`` request for the subject's customers, apply ``change`` to them and close the
    request with its audit line, in one transaction. ``change`` gets the subject's scope (current customers,
    and the former ids merged into them) and returns the rows changed and the audit text."""
    now = now or register.utcnow()
    con = con or connect(settings.db_path, create=False)  # a mistyped store is refused, not created empty
    try:
        ensure_restrictions(con)
        register.ensure_register_schema(con)
        secret = store_secret(con, settings.secret_path)
        scope = _customers(con, subject, settings, secret)
        request_id = register.open_request(con, request_kind, subject.hash(secret), now=now)
        with transaction(con):
            changed, text = change(con, scope, request_id, now)
            register.complete_request(con, request_id, records_affected=changed, now=now)
            register.audit(con, request_kind, request_id, text, changed, actor, now)
        return RestrictionResult(request_id, len(scope.customers), int(changed))
    finally:
        con.close()


def restrict(
    settings: Settings,
    subject: Subject,
    kind: str = "restriction",
    con: duckdb.DuckDBPyConnection | None = None,
    now: datetime | None = None,
    actor: str | None = None,
) -> RestrictionResult:
    """Restrict processing of (or record an objection by) the subject's customers."""
    if kind not in KINDS:
        raise CdpError(f"--kind: must be one of {', '.join(KINDS)}")

    def add(con: duckdb.DuckDBPyConnection, scope: Scope, request_id: str, now: datetime) -> tuple[int, str]:
        changed, customers = 0, scope.customers
        for customer_id in customers:
            changed += con.execute(
                """INSERT INTO restrictions SELECT ?, ?, ?, ?, NULL WHERE NOT EXISTS (
                       SELECT 1 FROM restrictions WHERE customer_id = ? AND kind = ? AND lifted_at IS NULL)""",
                [customer_id, request_id, kind, now, customer_id, kind],
            ).fetchall()[0][0]
        return changed, f"{kind} recorded for {len(customers)} customers"

    return _recorded(settings, subject, kind, add, con, now, actor)


def unrestrict(
    settings: Settings,
    subject: Subject,
    kind: str | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    now: datetime | None = None,
    actor: str | None = None,
) -> RestrictionResult:
    """Lift the subject's active restrictions (of ``kind``, or of both kinds), and those of the former ids
    merged into them, which the current ids' came from."""
    if kind is not None and kind not in KINDS:
        raise CdpError(f"--kind: must be one of {', '.join(KINDS)}")
    kinds = [kind] if kind else list(KINDS)

    def lift(con: duckdb.DuckDBPyConnection, scope: Scope, _request: str, now: datetime) -> tuple[int, str]:
        changed = 0
        for customer_id in [*scope.customers, *scope.former_customers]:
            for k in kinds:
                changed += con.execute(
                    "UPDATE restrictions SET lifted_at = ? WHERE customer_id = ? AND kind = ? AND lifted_at IS NULL",
                    [now, customer_id, k],
                ).fetchall()[0][0]
        return changed, f"{changed} restrictions lifted"

    return _recorded(settings, subject, "lift_restriction", lift, con, now, actor)


# Active restrictions whose customer id was replaced by one that does not carry them (yet): no active one of
# their kind, and not this one lifted there (a restriction lifted on the new id is not carried back to it).
_NOT_CARRIED = """FROM restrictions r JOIN customer_id_history h ON h.old_customer_id = r.customer_id
    WHERE r.lifted_at IS NULL AND h.new_customer_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM restrictions x WHERE x.customer_id = h.new_customer_id
                      AND x.kind = r.kind AND (x.lifted_at IS NULL OR x.request_id = r.request_id))"""


def restrictions_not_carried(con: duckdb.DuckDBPyConnection) -> int:
    """How many active restrictions have not reached the ids that replaced their customer (0 when sound)."""
    if not (table_exists(con, "restrictions") and table_exists(con, "customer_id_history")):
        return 0
    return int(con.execute(f"SELECT count(*) {_NOT_CARRIED}").fetchall()[0][0])


def carry_restrictions(con: duckdb.DuckDBPyConnection, now: datetime | None = None) -> int:
    """Give every active restriction on a customer id that was replaced (``customer_id_history``) to the
    ids that replaced it, keeping its request id and kind. Returns the rows added; idempotent."""
    if not (table_exists(con, "restrictions") and table_exists(con, "customer_id_history")):
        return 0
    total = 0
    while True:  # follow chains of replacements (a -> b -> c)
        added = con.execute(
            f"INSERT INTO restrictions SELECT DISTINCT h.new_customer_id, r.request_id, r.kind, ?, NULL {_NOT_CARRIED}",
            [now or register.utcnow()],
        ).fetchall()[0][0]
        if not added:
            return total
        total += int(added)
