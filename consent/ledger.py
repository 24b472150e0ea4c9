"""The consent ledger: every grant and withdrawal ever received, appended once; what it said is never rewritten.

Two feeds write to ``consent_events``:

* the ``consent`` source (``stg_consent``): one event per row, ``origin = 'consent'``;
* the app's ``push_opt_in`` / ``push_opt_out`` events (``stg_records`` rows from source ``app``), which
  become ``push_marketing`` grants and withdrawals through the event's ``device_id``
  (``origin = 'app'``, ``source = 'app_prompt'``).

Each event keeps the identifiers it named, as staging reads them (read again from the event's raw row when
staging's rules change: :func:`_reread_identifiers`). Whether those identifiers belong to a known customer
is decided later, each run, by :mod:`consent.state`; an event whose identifiers are not known yet stays
here and applies once they appear. Events with an unknown purpose or status are not
consent and are counted, not appended. Only erasure (the privacy owner) deletes rows from the ledger.

An event re-sent with other content (the same consent id, or app event id, now a withdrawal; a corrected
time or identifier) is a new version, appended beside the first (:data:`VERSION_SUFFIX`): nothing received
is dropped, and the proof of an earlier grant stays. Consent state treats each version as an event, so the
latest in time wins and, at the same instant, a withdrawal beats a grant: a correction may withdraw, not
grant, at the first version's time.
"""

from __future__ import annotations

import duckdb

from cdp.config import PURPOSES
from cdp.store import UNCOMPRESSED, drop_primary_key, ensure_table, table_exists, transaction

#: Identifier columns an event may name, in the order consent resolution tries them.
EVENT_IDENTIFIERS = (
    "email_key",
    "phone_e164",
    "user_id",
    "crm_id",
    "loyalty_id",
    "device_id",
    "anonymous_id",
)
STATUSES = ("granted", "withdrawn")

# The event id is stored plain: consent updates look events up by it (see cdp.store.UNCOMPRESSED). It is unique
# by construction (a first version takes the source's id, a later one its content's hash; the same content is
# never appended twice), without a primary key's index to write at every checkpoint (cdp.store.drop_primary_key).
LEDGER_DDL = f"""CREATE TABLE IF NOT EXISTS consent_events (
    -- 'consent:'||consent_id or 'app:'||event_id, '@'||hash for later versions
    event_id VARCHAR {UNCOMPRESSED},
    origin VARCHAR NOT NULL,       -- 'consent' | 'app'
    consent_id VARCHAR,
    event_time TIMESTAMP NOT NULL,
    purpose VARCHAR NOT NULL,
    status VARCHAR NOT NULL,       -- 'granted' | 'withdrawn'
    source VARCHAR,
    policy_version VARCHAR,
    email VARCHAR, email_key VARCHAR, phone_e164 VARCHAR, user_id VARCHAR, crm_id VARCHAR,
    loyalty_id VARCHAR, device_id VARCHAR, anonymous_id VARCHAR,
    batch_id VARCHAR, file VARCHAR, row_number BIGINT,
    recorded_at TIMESTAMP NOT NULL
)"""

#: A later version of an event (a consent id or app event re-sent with other content) is appended under
#: the event's id plus ``@`` and 12 hex digits of its content's hash; :func:`base_event_id` strips them.
VERSION_SUFFIX = "@[0-9a-f]{12}$"


def base_event_id(column: str) -> str:
    """SQL: the id of the event the ledger row in ``column`` is a version of (itself, for a first version)."""
    return f"regexp_replace({column}, '{VERSION_SUFFIX}', '')"


def _versioned_id(base: str, content: list[str]) -> str:
    """SQL: ``base`` for an event the ledger does not hold yet (``known`` false), else ``base@<hash>``."""
    digest = f"left(md5(to_json(struct_pack({', '.join(f'{c} := {c}' for c in content)}))), 12)"
    return f"CASE WHEN known THEN {base} || '@' || {digest} ELSE {base} END"


def _new_batches(con: duckdb.DuckDBPyConnection, table: str, origin: str, where: str = "true") -> list[str | None]:
    """Batches of the staged ``table`` (rows matching ``where``) that no earlier sync of ``origin`` took in.
    Each row of any other batch is in the ledger, or was left out then (not consent, or the same content as a
    version there): the sync compares only these batches' rows. They are named as constants, so that the
    scan of the staged table skips the row groups of older batches (a join on the ledger's batches read
    the whole table, every run). Rows without a batch (staged by hand) are compared on every sync: the list
    then holds ``None``."""
    return [
        row[0]
        for row in con.execute(
            f"""SELECT DISTINCT batch_id FROM {table} s
                WHERE {where} AND NOT EXISTS (
                    SELECT 1 FROM consent_events e WHERE e.origin = ? AND e.batch_id = s.batch_id)
                ORDER BY 1""",
            [origin],
        ).fetchall()
    ]


_CONSENT_CONTENT = ["event_time", "purpose", "status", "source", "policy_version", "email", *EVENT_IDENTIFIERS]

# The ledger's versions of the batch's consent ids are read first (a semi-join filters the ledger's scan by
# id), then compared whole: matching the batch against every consent event read every column of the ledger's
# 200k rows (the 1M bench's 1% batch: 55 ms).
_FROM_CONSENT = f"""
INSERT INTO consent_events
WITH s AS MATERIALIZED (
    SELECT * FROM (SELECT * REPLACE (lower(trim(purpose)) AS purpose, lower(trim(status)) AS status),
                          row_number() OVER (PARTITION BY consent_id ORDER BY batch_id, row_number) AS copy
                   FROM stg_consent r
                   WHERE consent_id IS NOT NULL AND event_time IS NOT NULL
                     AND (batch_id IS NULL OR batch_id = ANY($batches)))
    WHERE copy = 1 AND purpose IN {PURPOSES} AND status IN {STATUSES}),
held AS MATERIALIZED (
    SELECT * FROM consent_events WHERE origin = 'consent' AND consent_id IN (SELECT consent_id FROM s))
SELECT {_versioned_id("'consent:' || consent_id", _CONSENT_CONTENT)}, 'consent', consent_id, event_time,
       purpose, status, source, policy_version,
       email, email_key, phone_e164, user_id, crm_id, loyalty_id, device_id, anonymous_id,
       batch_id, file, row_number, now()::TIMESTAMP
FROM (
    SELECT s.*, s.consent_id IN (SELECT consent_id FROM held) AS known FROM s
    WHERE NOT EXISTS (  -- this very content is in the ledger already
          SELECT 1 FROM held e
          WHERE e.consent_id = s.consent_id
            AND {" AND ".join(f"e.{c} IS NOT DISTINCT FROM s.{c}" for c in _CONSENT_CONTENT)})
)
"""

_APP_CONTENT = ["event_time", "status", "device_id"]

_FROM_APP = f"""
INSERT INTO consent_events
SELECT {_versioned_id("'app:' || record_id", _APP_CONTENT)}, 'app', NULL, event_time, 'push_marketing',
       status, 'app_prompt', NULL, NULL, NULL, NULL, NULL, NULL, NULL, device_id, NULL,
       batch_id, file, row_number, now()::TIMESTAMP
FROM (
    SELECT r.*, 'app:' || record_id IN (
               SELECT {base_event_id("event_id")} FROM consent_events WHERE origin = 'app') AS known
    FROM (SELECT source_record_id AS record_id, record_time AS event_time, device_id, batch_id, file, row_number,
                 CASE event_type WHEN 'push_opt_in' THEN 'granted' ELSE 'withdrawn' END AS status
          FROM stg_records s
          WHERE source = 'app' AND event_type IN ('push_opt_in', 'push_opt_out')
            AND device_id IS NOT NULL AND record_time IS NOT NULL
            AND (s.batch_id IS NULL OR s.batch_id = ANY($batches))) r
    WHERE NOT EXISTS (  -- this very content is in the ledger already
        SELECT 1 FROM consent_events e
        WHERE e.origin = 'app' AND {base_event_id("e.event_id")} = 'app:' || r.record_id
          AND {" AND ".join(f"e.{c} IS NOT DISTINCT FROM r.{c}" for c in _APP_CONTENT)})
)
"""

_NOT_CONSENT = f"""
SELECT count(*) FROM stg_consent
WHERE consent_id IS NULL OR event_time IS NULL
   OR lower(trim(purpose)) NOT IN {PURPOSES} OR lower(trim(status)) NOT IN {STATUSES}
   OR purpose IS NULL OR status IS NULL
"""


def ensure_ledger(con: duckdb.DuckDBPyConnection) -> None:
    """The ledger table; a ledger made with a primary key is declared anew without it (outside a transaction)."""
    ensure_table(con, LEDGER_DDL)
    drop_primary_key(con, LEDGER_DDL)


def sync_ledger(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Append events not yet in the ledger from ``stg_consent`` and the app's push opt-ins/outs.

    Idempotent: an event already in the ledger with the same content is never appended twice; one re-sent
    with other content is appended as a new version of it.
    Returns counts: ``appended_consent``, ``appended_app``, ``not_consent`` (rows with an unknown purpose or
    status, left out), ``events`` (ledger size).
    """
    ensure_ledger(con)
    reread = _reread_identifiers(con)
    before = _count(con)
    appended_consent = appended_app = not_consent = 0
    if table_exists(con, "stg_consent"):
        batches = _new_batches(con, "stg_consent", "consent")
        if batches:
            con.execute(_FROM_CONSENT, {"batches": batches})
            appended_consent = _count(con) - before
        not_consent = int(con.execute(_NOT_CONSENT).fetchall()[0][0])
    if table_exists(con, "stg_records"):
        batches = _new_batches(con, "stg_records", "app", "source = 'app'")
        if batches:
            mid = _count(con)
            con.execute(_FROM_APP, {"batches": batches})
            appended_app = _count(con) - mid
    return {
        "reread": reread,
        "appended_consent": appended_consent,
        "appended_app": appended_app,
        "not_consent": not_consent,
        "events": _count(con),
    }


#: The ledger's row in ``staging_basis``: the staging rules its events' identifiers were last read by.
_LEDGER_BASIS = "consent_events"


def _reread_identifiers(con: duckdb.DuckDBPyConnection) -> int:
    """Read the identifiers of every event again from the raw row it came from, by staging's rules now, when
    those rules changed since the ledger last read them; returns how many events' identifiers changed.

    An event keeps the identifiers staging read when it was appended. When a rule changes (card numbers
    read in capitals, UUIDs in lower case, addresses beyond ASCII read at all, a phonenumbers release),
    staging restages every record, but the events appended before would still name ``loy10042``, a device
    id in capitals or no email at all, and reach nobody: an old withdrawal would stop applying. So once per
    change (the staged tables' fingerprints in ``staging_basis``) every event's identifiers are taken anew
    from its raw row (``batch_id``, ``row_number``), what it received, as staging reads it now; consent
    state, if any event changed, is then computed anew in full. What the event said otherwise is not
    touched. An event whose raw row is gone keeps its identifiers.
    """
    from identity.staging import BASIS_DDL, CONSENT_SOURCE, RECORD_SOURCES
    from identity.standardise import email_functions

    if not table_exists(con, "phone_map"):  # nothing staged by staging's rules (its SQL reads phones there)
        return 0
    con.execute(BASIS_DDL)
    staged = dict(con.execute("SELECT table_name, fingerprint FROM staging_basis").fetchall())
    rules = f"{staged.get('stg_consent')} {staged.get('stg_records')}"
    if staged.get(_LEDGER_BASIS) == rules:
        return 0
    app = next(source for source in RECORD_SOURCES if source.raw == "raw_app")
    feeds = [("consent", CONSENT_SOURCE, ["email", *EVENT_IDENTIFIERS]), ("app", app, ["device_id"])]
    changed = 0
    with transaction(con), email_functions(con):
        for origin, source, columns in feeds:
            if not table_exists(con, source.raw):
                continue
            # Read into a temp table first: an UPDATE ... FROM over the staging SQL itself took 3-12 s at 1M
            # records (0.6 s this way).
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE _ledger_reread AS
                    SELECT e.event_id, {", ".join(f"n.{c}" for c in columns)}
                    FROM consent_events e
                    JOIN (SELECT batch_id AS _batch, row_number AS _row, {", ".join(columns)}
                          FROM ({source.rows()})) n
                      ON e.origin = '{origin}' AND e.batch_id = n._batch AND e.row_number = n._row
                    WHERE {" OR ".join(f"e.{c} IS DISTINCT FROM n.{c}" for c in columns)}"""
            )
            changed += int(
                con.execute(
                    f"""UPDATE consent_events e SET {", ".join(f"{c} = n.{c}" for c in columns)}
                        FROM _ledger_reread n WHERE e.event_id = n.event_id"""
                ).fetchall()[0][0]
            )
            con.execute("DROP TABLE _ledger_reread")
        con.execute("INSERT OR REPLACE INTO staging_basis VALUES (?, ?)", [_LEDGER_BASIS, rules])
        if changed and table_exists(con, "consent_state_basis"):
            con.execute("DELETE FROM consent_state_basis")  # no basis: the next computation is a full one
    return changed


def _count(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM consent_events").fetchall()[0][0])
