"""Consent state: the ledger resolved per customer and purpose through the identity graph.

Recomputed from the whole ledger on every run, so that an event naming an identifier the platform had not
seen when it arrived applies as soon as a record carrying that identifier is linked to a customer.

Rules, in the order they are applied:

1. An event reaches a customer when any identifier it names (email match key, E.164 phone, user id, CRM id,
   loyalty id, device id, anonymous id) is carried by one of that customer's ``stg_records`` rows.
2. An identifier carried by several customers (a household phone, a shared device) is ambiguous. Deliberate
   choice, the safe side for the people concerned:

   * a **withdrawal** applies to every customer it reaches, through any identifier, ambiguous or not;
   * a **grant** applies only through identifiers that each belong to exactly one customer, and only when
     those all point to the same customer. A grant that names only a household phone grants nothing.

3. Per customer and purpose the latest applicable event wins, whichever identifier it came through; at the
   same instant a withdrawal beats a grant. Events later than ``as_of`` do not apply yet (a withdrawal
   applies from its own timestamp).
4. No event means no consent: customers without a row in ``consent_state`` for a purpose may not be
   contacted for it (see :mod:`consent.enforce`).
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from cdp.store import table_exists
from consent.ledger import EVENT_IDENTIFIERS, ensure_ledger

STATE_DDL = """CREATE TABLE IF NOT EXISTS consent_state (
    customer_id VARCHAR, purpose VARCHAR, status VARCHAR, updated_at TIMESTAMP, source VARCHAR,
    event_id VARCHAR, origin VARCHAR, policy_version VARCHAR, via VARCHAR, computed_at TIMESTAMP,
    PRIMARY KEY (customer_id, purpose))"""

_IDS = ", ".join(EVENT_IDENTIFIERS)


def _loose_email(col: str) -> str:
    """A forgiving key for a mistyped email: the local part without punctuation or +tag, and the first label of
    the domain (``ptaylor@@virginmedia.com``, ``p.taylor@virginmedia.con`` and ``ptaylor@virginmedia.co`` all
    give ``ptaylor@virginmedia``)."""
    e = f"lower(regexp_replace({col}, '\\s', '', 'g'))"
    local = f"regexp_replace(split_part(split_part({e}, '@', 1), '+', 1), '[^a-z0-9]', '', 'g')"
    domain = f"regexp_replace(split_part(regexp_extract({e}, '@+([^@]*)$', 1), '.', 1), '[^a-z0-9]', '', 'g')"
    return f"(nullif({local}, '') || '@' || nullif({domain}, ''))"


def hits_sql(loose_withdrawals: bool) -> str:
    """SQL of every (event, customer, identifier kind) an event reaches, with the kind's fan-out (customers
    carrying that value) and ``n``, the number of customers the event reaches through unambiguous kinds.

    With ``loose_withdrawals`` (``raw_consent`` present), a withdrawal whose email did not reach anyone as
    written (a typo the standardiser could not read, or a mistyped domain) also reaches customers through
    :func:`_loose_email`. Only withdrawals: applying a withdrawal too widely costs a marketing message, a
    grant applied too widely would be a breach. Nothing new is stored: the spelling is read from
    ``raw_consent`` through the event's batch and row.
    """
    loose_customers = loose_events = ""
    if loose_withdrawals:
        loose_customers = f"""
        UNION
        SELECT DISTINCT l.customer_id, 'email_loose' AS kind, {_loose_email("r.email")} AS value
        FROM stg_records r JOIN customer_source_records l USING (source, source_record_id)
        WHERE r.email IS NOT NULL"""
        loose_events = f"""
        UNION
        SELECT ev.event_id, 'email_loose' AS kind, {_loose_email("rc.email")} AS value
        FROM consent_events ev JOIN raw_consent rc ON rc.batch_id = ev.batch_id AND rc.row_number = ev.row_number
        WHERE ev.origin = 'consent' AND ev.status = 'withdrawn' AND ev.event_time <= $as_of
          AND rc.email IS NOT NULL AND trim(rc.email) <> ''
          AND (ev.email_key IS NULL
               OR ev.email_key NOT IN (SELECT value FROM exact_ids WHERE kind = 'email_key'))"""
    return f"""
WITH exact_ids AS (
    SELECT DISTINCT customer_id, kind, value FROM (
        UNPIVOT (SELECT l.customer_id, {", ".join(f"r.{c}" for c in EVENT_IDENTIFIERS)}
                 FROM stg_records r JOIN customer_source_records l USING (source, source_record_id))
        ON {_IDS} INTO NAME kind VALUE value)
),
customer_ids AS (SELECT * FROM exact_ids {loose_customers}),
fanout AS (SELECT kind, value, count(*) AS customers FROM customer_ids GROUP BY kind, value),
event_ids AS (
    SELECT DISTINCT event_id, kind, value FROM (
        UNPIVOT (SELECT event_id, {_IDS} FROM consent_events WHERE event_time <= $as_of)
        ON {_IDS} INTO NAME kind VALUE value)
    {loose_events}
),
hits AS (
    SELECT e.event_id, c.customer_id, e.kind, f.customers
    FROM event_ids e JOIN customer_ids c USING (kind, value) JOIN fanout f USING (kind, value)
),
unique_targets AS (  -- customers reached through unambiguous identifiers, per event
    SELECT event_id, count(DISTINCT customer_id) AS n FROM hits WHERE customers = 1 AND kind <> 'email_loose'
    GROUP BY event_id
)
SELECT h.*, coalesce(u.n, 0) AS n FROM hits h LEFT JOIN unique_targets u USING (event_id)
"""


#: From ``_consent_hits``: the latest applicable event per customer and purpose (rules 2 and 3 above).
_STATE_SQL = """
WITH applicable AS (
    SELECT h.event_id, h.customer_id, string_agg(DISTINCT h.kind, ',' ORDER BY h.kind) AS via
    FROM _consent_hits h JOIN consent_events ev USING (event_id)
    WHERE ev.status = 'withdrawn' OR (h.customers = 1 AND h.n = 1 AND h.kind <> 'email_loose')
    GROUP BY h.event_id, h.customer_id
)
SELECT a.customer_id, ev.purpose, ev.status, ev.event_time AS updated_at, ev.source, ev.event_id,
       ev.origin, ev.policy_version, a.via, $as_of::TIMESTAMP AS computed_at
FROM applicable a JOIN consent_events ev USING (event_id)
QUALIFY row_number() OVER (
    PARTITION BY a.customer_id, ev.purpose
    ORDER BY ev.event_time DESC, (ev.status = 'withdrawn') DESC, ev.event_id DESC) = 1
"""


def ensure_state(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(STATE_DDL)


def build_consent_state(con: duckdb.DuckDBPyConnection, as_of: datetime | None = None) -> dict[str, int]:
    """Rebuild ``consent_state`` from the whole ledger. Returns counts only, no personal data.

    ``granted`` / ``withdrawn``: state rows by status; ``events``: ledger size; ``unmatched_events``: events
    that reach no known customer yet (kept, applied once their identifiers appear); ``ambiguous_grants``:
    grants that reach customers only ambiguously and so grant nothing.
    """
    ensure_ledger(con)
    ensure_state(con)
    as_of = as_of or datetime.now().replace(tzinfo=None)
    params = {"as_of": as_of}
    linked = table_exists(con, "stg_records") and table_exists(con, "customer_source_records")
    reached = ambiguous = 0
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM consent_state")
        if linked:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE _consent_hits AS {hits_sql(table_exists(con, 'raw_consent'))}", params
            )
            con.execute(f"INSERT INTO consent_state {_STATE_SQL}", params)
            reached, ambiguous = con.execute(
                """SELECT count(DISTINCT h.event_id),
                          count(DISTINCT h.event_id) FILTER (WHERE ev.status = 'granted' AND h.n <> 1)
                   FROM _consent_hits h JOIN consent_events ev USING (event_id)"""
            ).fetchall()[0]
            con.execute("DROP TABLE _consent_hits")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    counts = dict(con.execute("SELECT status, count(*) FROM consent_state GROUP BY status").fetchall())
    events = int(con.execute("SELECT count(*) FROM consent_events").fetchall()[0][0])
    return {
        "granted": int(counts.get("granted", 0)),
        "withdrawn": int(counts.get("withdrawn", 0)),
        "events": events,
        "unmatched_events": events - int(reached),
        "ambiguous_grants": int(ambiguous),
    }
