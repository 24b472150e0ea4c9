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
"""

from __future__ import annotations

import duckdb

from cdp.config import PURPOSES
from cdp.store import table_exists

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
    event_id VARCHAR PRIMARY KEY,  -- 'consent:'||consent_id or 'app:'||event_id
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

_FROM_CONSENT = f"""
INSERT INTO consent_events
SELECT 'consent:' || consent_id, 'consent', consent_id, event_time,
       lower(trim(purpose)), lower(trim(status)), source, policy_version,
       email, email_key, phone_e164, user_id, crm_id, loyalty_id, device_id, anonymous_id,
       batch_id, file, row_number, now()::TIMESTAMP
FROM (SELECT *, row_number() OVER (PARTITION BY consent_id ORDER BY batch_id, row_number) AS copy
      FROM stg_consent  -- consent ids not in the ledger yet, before the window: the new batches' only
      WHERE consent_id NOT IN (SELECT consent_id FROM consent_events
                               WHERE origin = 'consent' AND consent_id IS NOT NULL))
WHERE copy = 1 AND consent_id IS NOT NULL AND event_time IS NOT NULL
  AND lower(trim(purpose)) IN {PURPOSES} AND lower(trim(status)) IN {STATUSES}
"""

_FROM_APP = """
INSERT INTO consent_events
SELECT 'app:' || source_record_id, 'app', NULL, record_time, 'push_marketing',
       CASE event_type WHEN 'push_opt_in' THEN 'granted' ELSE 'withdrawn' END, 'app_prompt', NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, device_id, NULL,
       batch_id, file, row_number, now()::TIMESTAMP
FROM stg_records r
WHERE source = 'app' AND event_type IN ('push_opt_in', 'push_opt_out')
  AND device_id IS NOT NULL AND record_time IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM consent_events e WHERE e.event_id = 'app:' || r.source_record_id)
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

    Idempotent: an event already in the ledger (same consent id or app event id) is never appended twice.
    Returns counts: ``appended_consent``, ``appended_app``, ``not_consent`` (rows with an unknown purpose or
    status, left out), ``events`` (ledger size).
    """
    ensure_ledger(con)
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
        "appended_consent": appended_consent,
        "appended_app": appended_app,
        "not_consent": not_consent,
        "events": _count(con),
    }


def _count(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM consent_events").fetchall()[0][0])
