"""Staging: the raw tables standardised into ``stg_records`` and ``stg_consent``.

``stg_records`` holds one row per web event, app event, store transaction and CRM contact (the latest
version of a key that several batches carried), with identifiers in the forms matching uses: the email
match key, E.164 phones, cleaned names and postcodes. ``unit_id`` names the identity unit a record
belongs to: a CRM contact, a store transaction, a web cookie or an app device.

Rules are those of :mod:`identity.standardise`; phones go through ``phonenumbers`` once per distinct
spelling, everything else runs as SQL inside DuckDB.
"""

from __future__ import annotations

import duckdb

from identity.standardise import (
    normalise_phone,
    sql_email_match_key,
    sql_normalise_email,
    sql_normalise_name,
    sql_normalise_postcode,
    sql_trim_id,
)

_PHONE_SOURCES = ("raw_app", "raw_store", "raw_crm", "raw_consent")


def build_phone_map(con: duckdb.DuckDBPyConnection, region: str) -> int:
    """(Re)build ``phone_map(raw, e164)`` for every distinct phone spelling in the raw tables."""
    con.execute("CREATE TABLE IF NOT EXISTS phone_map (raw VARCHAR PRIMARY KEY, e164 VARCHAR)")
    union = " UNION ".join(f"SELECT phone FROM {t} WHERE phone IS NOT NULL" for t in _PHONE_SOURCES)
    new = con.execute(f"SELECT DISTINCT phone FROM ({union}) WHERE phone NOT IN (SELECT raw FROM phone_map)").fetchall()
    if new:
        frame = {"raw": [p for (p,) in new], "e164": [normalise_phone(p, region) for (p,) in new]}
        import pandas as pd

        df = pd.DataFrame(frame)  # noqa: F841  (read by DuckDB's replacement scan below)
        con.execute("INSERT INTO phone_map SELECT raw, e164 FROM df")
    # Spellings no longer present anywhere (erased) must not linger in the map.
    con.execute(f"DELETE FROM phone_map WHERE raw NOT IN (SELECT phone FROM ({union}))")
    return len(new)


def _ids(*cols: str) -> str:
    return ", ".join(f"{sql_trim_id(c)} AS {c}" for c in cols)


def _person(email: str = "email", phone: str = "phone") -> str:
    return (
        f"{sql_normalise_email(email)} AS email, {sql_email_match_key(email)} AS email_key, "
        f"(SELECT e164 FROM phone_map WHERE phone_map.raw = {phone}) AS phone_e164"
    )


_NULL_PERSON = (
    "NULL::VARCHAR AS first_name, NULL::VARCHAR AS last_name, NULL::DATE AS date_of_birth, "
    "NULL::VARCHAR AS address_line1, NULL::VARCHAR AS city, NULL::VARCHAR AS postcode, NULL::VARCHAR AS country"
)
_META = "batch_id, file, row_number"
# Latest version of a key wins: by its own time, then by the later ingested batch.
_LATEST = (
    "QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {time} DESC NULLS LAST, "
    "(SELECT ingested_at FROM ingest_batches b WHERE b.batch_id = r.batch_id) DESC, row_number DESC) = 1"
)

STG_RECORDS_SQL = f"""
CREATE OR REPLACE TABLE stg_records AS
SELECT 'web' AS source, event_id AS source_record_id, 'web:' || trim(anonymous_id) AS unit_id,
       event_time AS record_time, lower(trim(event_type)) AS event_type,
       {sql_trim_id("user_id")} AS user_id, NULL::VARCHAR AS loyalty_id, NULL::VARCHAR AS crm_id,
       {sql_trim_id("anonymous_id")} AS anonymous_id, NULL::VARCHAR AS device_id,
       {sql_normalise_email("email")} AS email, {sql_email_match_key("email")} AS email_key,
       NULL::VARCHAR AS phone_e164, {_NULL_PERSON},
       {sql_trim_id("order_id")} AS order_id, revenue AS amount, upper(trim(currency)) AS currency,
       NULL::VARCHAR AS store_id, {_META}
FROM raw_web r {_LATEST.format(key="event_id", time="event_time")}
UNION ALL BY NAME
SELECT 'app' AS source, event_id AS source_record_id, 'app:' || trim(device_id) AS unit_id,
       event_time AS record_time, lower(trim(event_type)) AS event_type,
       {_ids("user_id")}, NULL AS loyalty_id, NULL AS crm_id, NULL AS anonymous_id, {_ids("device_id")},
       {_person()}, {_NULL_PERSON},
       {sql_trim_id("order_id")} AS order_id, revenue AS amount, upper(trim(currency)) AS currency,
       NULL AS store_id, {_META}
FROM raw_app r {_LATEST.format(key="event_id", time="event_time")}
UNION ALL BY NAME
SELECT 'store' AS source, transaction_id AS source_record_id, 'store:' || transaction_id AS unit_id,
       transaction_time AS record_time, 'purchase' AS event_type,
       NULL AS user_id, {_ids("loyalty_id")}, NULL AS crm_id, NULL AS anonymous_id, NULL AS device_id,
       {_person()},
       {sql_normalise_name("first_name")} AS first_name, {sql_normalise_name("last_name")} AS last_name,
       NULL::DATE AS date_of_birth, NULL AS address_line1, NULL AS city,
       {sql_normalise_postcode("postcode")} AS postcode, NULL AS country,
       transaction_id AS order_id, amount, upper(trim(currency)) AS currency, {_ids("store_id")}, {_META}
FROM raw_store r {_LATEST.format(key="transaction_id", time="transaction_time")}
UNION ALL BY NAME
SELECT 'crm' AS source, crm_id AS source_record_id, 'crm:' || trim(crm_id) AS unit_id,
       coalesce(updated_at, created_at) AS record_time, 'crm_contact' AS event_type,
       {_ids("user_id", "loyalty_id", "crm_id")}, NULL AS anonymous_id, NULL AS device_id,
       {_person()},
       {sql_normalise_name("first_name")} AS first_name, {sql_normalise_name("last_name")} AS last_name,
       date_of_birth,
       NULLIF(trim(regexp_replace(lower(strip_accents(address_line1)), '[^a-z0-9 ]+', ' ', 'g')), '')
           AS address_line1,
       NULLIF(lower(trim(city)), '') AS city, {sql_normalise_postcode("postcode")} AS postcode,
       NULLIF(upper(trim(country)), '') AS country,
       NULL AS order_id, NULL::DECIMAL(18,2) AS amount, NULL AS currency, NULL AS store_id, {_META}
FROM raw_crm r {_LATEST.format(key="crm_id", time="coalesce(updated_at, created_at)")}
"""

STG_CONSENT_SQL = f"""
CREATE OR REPLACE TABLE stg_consent AS
SELECT consent_id, event_time, lower(trim(purpose)) AS purpose, lower(trim(status)) AS status,
       NULLIF(lower(trim(source)), '') AS source, NULLIF(trim(policy_version), '') AS policy_version,
       {_person()}, {_ids("user_id", "crm_id", "loyalty_id", "device_id", "anonymous_id")}, {_META}
FROM raw_consent r {_LATEST.format(key="consent_id", time="event_time")}
"""


def build_stg_records(con: duckdb.DuckDBPyConnection, region: str = "GB") -> dict[str, int]:
    """Rebuild ``stg_records`` from the raw record tables; returns row counts per source."""
    con.execute("SET TimeZone = 'UTC'")
    build_phone_map(con, region)
    con.execute(STG_RECORDS_SQL)
    return dict(con.execute("SELECT source, count(*) FROM stg_records GROUP BY 1 ORDER BY 1").fetchall())


def build_stg_consent(con: duckdb.DuckDBPyConnection, region: str = "GB") -> int:
    """Rebuild ``stg_consent`` from ``raw_consent``; returns its row count."""
    con.execute("SET TimeZone = 'UTC'")
    build_phone_map(con, region)
    con.execute(STG_CONSENT_SQL)
    return int(con.execute("SELECT count(*) FROM stg_consent").fetchall()[0][0])


def build_staging(con: duckdb.DuckDBPyConnection, region: str = "GB") -> dict[str, int]:
    """Rebuild both staged tables; returns row counts per source, consent included."""
    counts = build_stg_records(con, region)
    counts["consent"] = build_stg_consent(con, region)
    return counts
