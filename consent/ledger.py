"""The consent ledger: every grant and withdrawal ever received, appended once and never rewritten.

Two feeds write to ``consent_events``:

* the ``consent`` source (``stg_consent``): one event per row, ``origin = 'consent'``;
* the app's ``push_opt_in`` / ``push_opt_out`` events (``stg_records`` rows from source ``app``), which
  become ``push_marketing`` grants and withdrawals through the event's ``device_id``
  (``origin = 'app'``, ``source = 'app_prompt'``).

Each event keeps the identifiers it named (normalised as in staging). Whether those identifiers belong to
a known customer is decided later, each run, by :mod:`consent.state`; an event whose identifiers are not
known yet stays here and applies once they appear. Events with an unknown purpose or status are not
consent and are counted, not appended. Only erasure (the privacy owner) deletes rows from the ledger.

An event re-sent with other content (the same consent id, or app event id, now a withdrawal; a corrected
time or identifier) is a new version, appended beside the first (:data:`VERSION_SUFFIX`): nothing received
is dropped, and the proof of an earlier grant stays. Consent state treats each version as an event, so the
latest in time wins and, at the same instant, a withdrawal beats a grant: a correction may withdraw, not
grant, at the first version's time.
"""

from __future__ import annotations

import hashlib

import duckdb

from cdp.config import PURPOSES
from cdp.store import table_exists, transaction

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

LEDGER_DDL = """CREATE TABLE IF NOT EXISTS consent_events (
    event_id VARCHAR PRIMARY KEY,  -- 'consent:'||consent_id or 'app:'||event_id, '@'||hash for later versions
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


def _in_new_batch(alias: str, origin: str) -> str:
    """SQL: the staged row ``alias`` comes from a batch no earlier sync of ``origin`` took in. Each row of such
    a batch is in the ledger, or was left out then (not consent, or the same content as a version there):
    skipping them leaves the new batches' rows to compare, not the whole staged table (a batch-level
    anti-join costs a fifth of a row-level one)."""
    return (
        f"NOT EXISTS (SELECT 1 FROM (SELECT DISTINCT batch_id FROM consent_events WHERE origin = '{origin}') b "
        f"WHERE b.batch_id = {alias}.batch_id)"
    )


_CONSENT_CONTENT = ["event_time", "purpose", "status", "source", "policy_version", "email", *EVENT_IDENTIFIERS]

_FROM_CONSENT = f"""
INSERT INTO consent_events
SELECT {_versioned_id("'consent:' || consent_id", _CONSENT_CONTENT)}, 'consent', consent_id, event_time,
       purpose, status, source, policy_version,
       email, email_key, phone_e164, user_id, crm_id, loyalty_id, device_id, anonymous_id,
       batch_id, file, row_number, now()::TIMESTAMP
FROM (
    SELECT s.*, s.consent_id IN (SELECT consent_id FROM consent_events WHERE origin = 'consent') AS known
    FROM (SELECT * REPLACE (lower(trim(purpose)) AS purpose, lower(trim(status)) AS status),
                 row_number() OVER (PARTITION BY consent_id ORDER BY batch_id, row_number) AS copy
          FROM stg_consent r
          WHERE consent_id IS NOT NULL AND event_time IS NOT NULL
            AND {_in_new_batch("r", "consent")}) s
    WHERE copy = 1 AND purpose IN {PURPOSES} AND status IN {STATUSES}
      AND NOT EXISTS (  -- this very content is in the ledger already
          SELECT 1 FROM consent_events e
          WHERE e.origin = 'consent' AND e.consent_id = s.consent_id
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
            AND {_in_new_batch("s", "app")}) r
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
    con.execute(LEDGER_DDL)


def sync_ledger(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Append events not yet in the ledger from ``stg_consent`` and the app's push opt-ins/outs.

    Idempotent: an event already in the ledger with the same content is never appended twice; one re-sent
    with other content is appended as a new version of it.
    Returns counts: ``appended_consent``, ``appended_app``, ``not_consent`` (rows with an unknown purpose or
    status, left out), ``events`` (ledger size).
    """
    ensure_ledger(con)
    renormalised = _renormalise_ids(con)
    before = _count(con)
    appended_consent = appended_app = not_consent = 0
    if table_exists(con, "stg_consent"):
        con.execute(_FROM_CONSENT)
        appended_consent = _count(con) - before
        not_consent = int(con.execute(_NOT_CONSENT).fetchall()[0][0])
    if table_exists(con, "stg_records"):
        mid = _count(con)
        con.execute(_FROM_APP)
        appended_app = _count(con) - mid
    return {
        "renormalised": renormalised,
        "appended_consent": appended_consent,
        "appended_app": appended_app,
        "not_consent": not_consent,
        "events": _count(con),
    }


#: The ledger's id columns, and its row in ``staging_basis``: a hash of the rules they were last normalised by.
_ID_COLUMNS = ("user_id", "crm_id", "loyalty_id", "device_id", "anonymous_id")
_ID_RULES_BASIS = "consent_events ids"


def _renormalise_ids(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the ids of events appended under older matching rules to staging's rules now
    (:func:`identity.standardise.normalise_id`); returns how many events changed.

    An event keeps its identifiers as staging read them when it was appended. When a rule changes (card numbers
    read in capitals, UUIDs in lower case), staging restages every record, but an event appended before would
    still name ``loy10042`` or a device id in capitals, and reach nobody: an old withdrawal would stop
    applying. So once per change of the rules (their SQL's hash against ``staging_basis``), every event's ids
    are normalised again (the rules are idempotent: what they wrote before reads the same), and consent
    state, if any event changed, is computed anew in full. What the event received stays in the raw tables.
    """
    from identity.staging import BASIS_DDL
    from identity.standardise import sql_normalise_id

    rules = {column: sql_normalise_id(column, column) for column in _ID_COLUMNS}
    fingerprint = hashlib.sha256("\0".join(rules.values()).encode()).hexdigest()
    con.execute(BASIS_DDL)
    if con.execute("SELECT fingerprint FROM staging_basis WHERE table_name = ?", [_ID_RULES_BASIS]).fetchall() == [
        (fingerprint,)
    ]:
        return 0
    with transaction(con):
        changed = int(
            con.execute(
                f"""UPDATE consent_events SET {", ".join(f"{c} = {rule}" for c, rule in rules.items())}
                    WHERE {" OR ".join(f"{c} IS DISTINCT FROM {rule}" for c, rule in rules.items())}"""
            ).fetchall()[0][0]
        )
        con.execute("INSERT OR REPLACE INTO staging_basis VALUES (?, ?)", [_ID_RULES_BASIS, fingerprint])
        if changed and table_exists(con, "consent_state_basis"):
            con.execute("DELETE FROM consent_state_basis")  # no basis: the next computation is a full one
    return changed


def _count(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM consent_events").fetchall()[0][0])
