"""The one place that decides who may be contacted for a purpose. Every export path goes through here.

A customer may be exported for purpose P only when, at the moment of asking:

* nothing in :data:`EXCLUSIONS` applies (built in: an active restriction, i.e. a row in ``restrictions``
  with ``lifted_at IS NULL``; the privacy owner adds further rules with :func:`register_exclusion`);
* their ``consent_state`` for P is ``granted`` (no row means no consent; ``withdrawn`` is withdrawn);
* their profile has the contact point P's channel needs (:data:`cdp.config.PURPOSE_CHANNEL`; for ``phone``
  that is the profile's best *mobile* number, since text messages cannot reach a landline);
* every other customer whose records carry that same mailbox (by email match key), phone or device has a
  grant for P too and is not excluded (a household's shared address must not reach the member who said no).

Erased subjects are removed from every table by erasure, so they have no profile and cannot be selected;
an exclusion registered by the privacy owner can name them if a profile outlives its erasure.

Callers select with :func:`approve` and, just before writing anything, call :func:`verify` again on the
exact rows they are about to write: it re-decides from the tables as they are then, so rows that were
never approved, or whose consent changed in between, or whose contact point was altered, are refused.
Nothing here logs or raises with personal data: only counts.

Example::

    >>> audience = approve(con, "email_marketing")  # doctest: +SKIP
    >>> verify(con, "email_marketing", audience.rows)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import pandas as pd

from cdp.config import PURPOSE_CHANNEL, PURPOSES
from cdp.errors import CdpError
from cdp.store import table_exists


class ConsentViolation(CdpError):
    """Rows about to leave the platform include customers who may not be contacted for the purpose."""


@dataclass(frozen=True)
class Exclusion:
    """A rule that keeps customers out of every export, checked before consent.

    ``predicate`` is SQL over the candidate's ``customer_id`` (column ``c.customer_id``) that is true when the
    customer must be left out. The rule applies only when every table in ``requires`` exists.
    """

    reason: str
    predicate: str
    requires: tuple[str, ...] = ()


#: Exclusions in priority order: a customer left out for several reasons is counted under the first.
EXCLUSIONS: list[Exclusion] = [
    Exclusion(
        "restricted",
        "EXISTS (SELECT 1 FROM restrictions r WHERE r.customer_id = c.customer_id AND r.lifted_at IS NULL)",
        requires=("restrictions",),
    ),
]

#: Reasons a customer is left out, in the order they are decided.
CONSENT_REASONS = ("withdrawn", "no_consent", "no_contact_point", "shared_contact_point")


def register_exclusion(exclusion: Exclusion) -> None:
    """Add a rule (e.g. the privacy owner's) that every export obeys; re-registering a reason replaces it."""
    EXCLUSIONS[:] = [e for e in EXCLUSIONS if e.reason != exclusion.reason] + [exclusion]


def reasons() -> tuple[str, ...]:
    return tuple(e.reason for e in EXCLUSIONS) + CONSENT_REASONS


def contact_column(purpose: str) -> str:
    """The profile column an export for ``purpose`` must carry (``customer_id`` when no channel is needed)."""
    check_purpose(purpose)
    return PURPOSE_CHANNEL[purpose]


def check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise CdpError(f"unknown purpose {purpose!r}; expected one of: {', '.join(PURPOSES)}")


@dataclass(frozen=True)
class Audience:
    """Customers approved for a purpose: ``rows`` has ``customer_id`` and the purpose's contact column."""

    purpose: str
    contact: str
    rows: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)  # as exclusion_counts, from the same decision
    decided_at: datetime = field(default_factory=datetime.now)


_names = itertools.count()


#: Per channel: how a profile's contact value is matched to the identifier other customers' records carry.
#: Emails are compared by match key (Gmail dots, +tags), so every spelling of one mailbox is one contact point.
_CONTACT_KEYS = {
    "email": "SELECT DISTINCT email AS contact, email_key AS k FROM stg_records WHERE email IS NOT NULL",
    "phone": "SELECT DISTINCT phone_e164 AS contact, phone_e164 AS k FROM stg_records WHERE phone_e164 IS NOT NULL",
    "device_id": "SELECT DISTINCT device_id AS contact, device_id AS k FROM stg_records WHERE device_id IS NOT NULL",
}
_HOLDER_COLUMN = {"email": "email_key", "phone": "phone_e164", "device_id": "device_id"}
#: The profile column that holds a channel's contact point: text messages go to mobile numbers only.
_PROFILE_COLUMN = {"phone": "mobile"}


def _decision_sql(con: duckdb.DuckDBPyConnection, purpose: str, candidates: str | None) -> str:
    """SQL with one row per candidate: customer_id, contact, excluded_because (NULL when allowed).

    Every profile is decided first (``base``); a candidate that passes is still left out
    (``shared_contact_point``) when another customer whose records carry the same mailbox, phone or device
    may not be contacted for the purpose (withdrawn, no consent, or excluded): a household's shared
    address must not reach the member who said no.
    """
    if not table_exists(con, "customer_profiles"):
        raise CdpError("no customer profiles yet; run `cdp run --inbox DIR` first")
    contact = contact_column(purpose)
    column = _PROFILE_COLUMN.get(contact, contact)
    source = (
        f"SELECT DISTINCT customer_id FROM {candidates}" if candidates else "SELECT customer_id FROM customer_profiles"
    )
    state = (
        "SELECT customer_id, status FROM consent_state WHERE purpose = $purpose"
        if table_exists(con, "consent_state")
        else "SELECT NULL::VARCHAR AS customer_id, NULL::VARCHAR AS status WHERE $purpose::VARCHAR IS NULL"
    )
    whens = [
        f"WHEN {e.predicate} THEN '{e.reason}'"  # reasons and predicates are code, not user text
        for e in EXCLUSIONS
        if all(table_exists(con, t) for t in e.requires)
    ]
    blocking = ", ".join(f"'{r}'" for r in (*(e.reason for e in EXCLUSIONS), "withdrawn", "no_consent"))
    shared_cte, shared = "", "false"
    if contact in _CONTACT_KEYS and table_exists(con, "stg_records") and table_exists(con, "customer_source_records"):
        # contact values held by a customer who may not be contacted (an allowed customer never blocks itself)
        shared_cte = f""",
    blocked_contacts AS (
        SELECT DISTINCT ck.contact FROM ({_CONTACT_KEYS[contact]}) ck
        JOIN (SELECT DISTINCT r.{_HOLDER_COLUMN[contact]} AS k, l.customer_id
              FROM stg_records r JOIN customer_source_records l USING (source, source_record_id)) h USING (k)
        JOIN base o ON o.customer_id = h.customer_id
        WHERE o.excluded_because IN ({blocking}))"""
        shared = "b.contact IN (SELECT contact FROM blocked_contacts)"
    return f"""
    WITH st AS ({state}),
    base AS (
        SELECT c.customer_id, c.{column} AS contact,
               CASE {" ".join(whens)}
                    WHEN s.status = 'withdrawn' THEN 'withdrawn'
                    WHEN s.status IS DISTINCT FROM 'granted' THEN 'no_consent'
                    WHEN c.{column} IS NULL OR trim(c.{column}::VARCHAR) = '' THEN 'no_contact_point'
               END AS excluded_because
        FROM customer_profiles c LEFT JOIN st s ON s.customer_id = c.customer_id
    ){shared_cte}
    SELECT q.customer_id, b.contact,
           CASE WHEN b.customer_id IS NULL THEN 'unknown_customer'
                WHEN b.excluded_because IS NOT NULL THEN b.excluded_because
                WHEN {shared} THEN 'shared_contact_point'
           END AS excluded_because
    FROM ({source}) q LEFT JOIN base b ON b.customer_id = q.customer_id
    """


def _run(
    con: duckdb.DuckDBPyConnection,
    purpose: str,
    candidates: pd.DataFrame | None,
    then: Callable[[str], pd.DataFrame],
) -> pd.DataFrame:
    check_purpose(purpose)
    if candidates is None:
        return then(_decision_sql(con, purpose, None))
    name = f"_enforce_candidates_{next(_names)}"
    con.register(name, candidates[["customer_id"]].astype({"customer_id": "string"}))
    try:
        return then(_decision_sql(con, purpose, name))
    finally:
        con.unregister(name)


def decide(con: duckdb.DuckDBPyConnection, purpose: str, candidates: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every candidate (default: every profile) with its contact point and why it is left out (or None)."""
    return _run(con, purpose, candidates, lambda sql: con.execute(f"{sql} ORDER BY 1", {"purpose": purpose}).df())


def exclusion_counts(
    con: duckdb.DuckDBPyConnection, purpose: str, candidates: pd.DataFrame | None = None
) -> dict[str, int]:
    """``{"candidates": n, "allowed": n, <reason>: n, ...}`` for a purpose; counts only."""

    def count(sql: str) -> pd.DataFrame:
        return con.execute(
            f"SELECT coalesce(excluded_because, 'allowed') AS k, count(*) AS n FROM ({sql}) GROUP BY 1",
            {"purpose": purpose},
        ).df()

    return _tally({str(r.k): int(r.n) for r in _run(con, purpose, candidates, count).itertuples()})


def _tally(found: dict[str, int]) -> dict[str, int]:
    out = {"candidates": int(sum(found.values())), "allowed": int(found.pop("allowed", 0))}
    for reason in reasons():
        out[reason] = int(found.pop(reason, 0))
    out.update({k: int(v) for k, v in found.items()})  # e.g. unknown_customer
    return out


def approve(con: duckdb.DuckDBPyConnection, purpose: str, candidates: pd.DataFrame | None = None) -> Audience:
    """The candidates who may be contacted for ``purpose`` now, with the contact point it needs."""
    contact = contact_column(purpose)
    decided = decide(con, purpose, candidates)
    allowed = decided[decided["excluded_because"].isna()]
    rows = allowed[["customer_id"]].copy()
    if contact != "customer_id":
        rows[contact] = allowed["contact"].to_numpy()
    counts = _tally({str(k): int(v) for k, v in decided["excluded_because"].fillna("allowed").value_counts().items()})
    return Audience(purpose=purpose, contact=contact, rows=rows.reset_index(drop=True), counts=counts)


def verify(con: duckdb.DuckDBPyConnection, purpose: str, rows: pd.DataFrame) -> None:
    """Refuse (raise :class:`ConsentViolation`) unless every row may be contacted for ``purpose`` right now.

    ``rows`` must hold ``customer_id`` and the purpose's contact column, exactly as they will be written;
    each contact must be the customer's current one, so rows cannot be redirected to another address.
    """
    contact = contact_column(purpose)
    if "customer_id" not in rows.columns or contact not in rows.columns:
        raise ConsentViolation(f"export rows for {purpose} must carry customer_id and {contact}")
    if rows.empty:
        return
    if rows["customer_id"].isna().any():
        raise ConsentViolation(f"export rows for {purpose} without a customer_id; nothing was written")
    decided = decide(con, purpose, rows[["customer_id"]]).set_index("customer_id")
    ids = rows["customer_id"].astype("string")
    now = decided.loc[ids].reset_index(drop=True)
    refused = now["excluded_because"].notna()
    if contact != "customer_id":
        written = rows[contact].astype("string").reset_index(drop=True)
        same = (now["contact"].astype("string") == written).fillna(False).astype(bool)
        refused = refused | ~same
    if bool(refused.any()):
        raise ConsentViolation(
            f"{int(refused.sum())} of {len(rows)} export rows may not be contacted for {purpose} now; "
            "nothing was written"
        )
