"""Staging: the raw tables standardised into ``stg_records`` and ``stg_consent``.

``stg_records`` holds one row per web event, app event, store transaction and CRM contact (the latest
version of a key that several batches carried), with identifiers in the forms matching uses: the email
match key, E.164 phones, cleaned names and postcodes. ``unit_id`` names the identity unit a record
belongs to: a CRM contact, a store transaction, a web cookie or an app device.

Rules are those of :mod:`identity.standardise`; phones go through ``phonenumbers`` once per distinct
spelling, emails beyond ASCII through the Python rule (:func:`identity.standardise.email_functions`),
everything else runs as SQL inside DuckDB.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import duckdb

from cdp.store import (
    batches_not_in,
    create_table_as,
    drop_primary_key,
    ensure_table,
    forget_batches,
    new_batches_by_table,
    record_batches,
    sql_strings,
    table_exists,
    transaction,
)
from identity.standardise import (
    email_functions,
    normalise_phone,
    sql_display_name,
    sql_fold_accents,
    sql_match_key,
    sql_normalise_email,
    sql_normalise_id,
    sql_normalise_name,
    sql_normalise_postcode,
    sql_phone_region,
    sql_plausible_dob,
    sql_read_by_python,
    sql_trim_id,
    sql_written_name,
)

#: The raw tables with phones, and the region each row's national numbers are read in (``''``: the
#: installation's ``default_region``; a CRM contact's own ``country`` when phonenumbers knows it). Staging,
#: ingestion's suppression check and erasure all read phones by this one rule.
PHONE_REGIONS = {
    "raw_app": "''",
    "raw_store": "''",
    "raw_crm": sql_phone_region("country"),
    "raw_consent": "''",
}


#: One row per spelling and region by construction (only spellings not in it are added), without a primary key's
#: index to write at every checkpoint (cdp.store.drop_primary_key); the staged tables look phones up in it by
#: a scalar subquery, which fails on a second row.
PHONE_MAP_DDL = "CREATE TABLE IF NOT EXISTS phone_map (raw VARCHAR, region VARCHAR, e164 VARCHAR)"


def _phone_spellings(batches: dict[str, list[str]] | None = None) -> str:
    """Every (spelling, region) pair of the raw tables' phones; of the rows of ``batches`` only (per raw table,
    as :func:`cdp.store.new_batches_by_table` gives them) when given."""
    return (
        " UNION ".join(
            f"SELECT phone AS raw, {region} AS region FROM {table} WHERE phone IS NOT NULL"
            + ("" if batches is None else f" AND batch_id IN ({sql_strings(batches[table])})")
            for table, region in PHONE_REGIONS.items()
            if batches is None or table in batches
        )
        or "SELECT NULL::VARCHAR AS raw, NULL::VARCHAR AS region WHERE false"
    )


def build_phone_map(
    con: duckdb.DuckDBPyConnection, region: str, prune: bool = True, batches: dict[str, list[str]] | None = None
) -> int:
    """Add to ``phone_map(raw, region, e164)`` every new phone spelling of the raw tables, read in its
    row's region (of ``batches`` only, when given); with ``prune`` also drop spellings no longer present
    (erasure removes an erased subject's spellings itself)."""
    ensure_table(con, PHONE_MAP_DDL)
    new = con.execute(
        f"SELECT DISTINCT raw, region FROM ({_phone_spellings(batches)}) s WHERE NOT EXISTS "
        "(SELECT 1 FROM phone_map m WHERE m.raw = s.raw AND m.region = s.region)"
    ).fetchall()
    if new:
        frame = {
            "raw": [p for p, _ in new],
            "region": [r for _, r in new],
            "e164": [normalise_phone(p, r or region) for p, r in new],
        }
        import pandas as pd

        df = pd.DataFrame(frame)  # noqa: F841  (read by DuckDB's replacement scan below)
        con.execute("INSERT INTO phone_map SELECT raw, region, e164 FROM df")
    if prune:  # spellings no longer present anywhere must not linger in the map
        con.execute(
            f"DELETE FROM phone_map m WHERE NOT EXISTS (SELECT 1 FROM ({_phone_spellings()}) s "
            "WHERE s.raw = m.raw AND s.region = m.region)"
        )
    return len(new)


def _names() -> str:
    """First and last name in matching form, and as written: the outer SELECT makes the latter what a profile
    shows (:data:`_NAMES_FINISH`)."""
    return ", ".join(
        f"{sql_normalise_name(col)} AS {col}, {sql_written_name(col)} AS {col}_display"
        for col in ("first_name", "last_name")
    )


def _ids(*cols: str) -> str:
    """Id columns as they are matched on (:func:`identity.standardise.normalise_id`; each column is its type)."""
    return ", ".join(f"{sql_normalise_id(c, c)} AS {c}" for c in cols)


def _email(col: str = "email") -> str:
    """The normalised email, and what the outer SELECT makes the match key of (:data:`_EMAIL_FINISH`): whether
    the Python rule reads the address, and its key if so."""
    read = sql_read_by_python(col)
    return (
        f"{sql_normalise_email(col)} AS email, "
        f"struct_pack(python := {read}, key := CASE WHEN {read} THEN cdp_email_match_key({col}) END) AS email_key"
    )


# A staged source is two SELECTs (:meth:`_Staged.select`). The inner one standardises the raw columns; the outer
# one finishes the values that are read several times from one standardised value: the email match key from the
# normalised address, a name as shown from the name as written. Written out in one SELECT, each use repeated the
# SQL it is read from, and DuckDB took 83 ms to plan the five sources' staging, against 44 ms now.
_EMAIL_FINISH = (f"CASE WHEN email_key.python THEN email_key.key ELSE {sql_match_key('email')} END AS email_key",)
_NAMES_FINISH = (
    *_EMAIL_FINISH,
    *(
        f"CASE WHEN {col} IS NOT NULL THEN {sql_display_name(f'{col}_display')} END AS {col}_display"
        for col in ("first_name", "last_name")
    ),
)
_ADDRESS_FINISH = (
    *_NAMES_FINISH,
    *(f"{sql_display_name(f'{col}_display', name=False)} AS {col}_display" for col in ("address_line1", "city")),
)


def _person(email: str = "email", phone: str = "phone", region: str = "''") -> str:
    return (
        f"{_email(email)}, (SELECT e164 FROM phone_map m WHERE m.raw = {phone} AND m.region = {region}) AS phone_e164"
    )


_NULL_PERSON = (
    "NULL::VARCHAR AS first_name, NULL::VARCHAR AS last_name, NULL::DATE AS date_of_birth, "
    "NULL::VARCHAR AS first_name_display, NULL::VARCHAR AS last_name_display, "
    "NULL::VARCHAR AS address_line1, NULL::VARCHAR AS city, NULL::VARCHAR AS postcode, NULL::VARCHAR AS country, "
    "NULL::VARCHAR AS address_line1_display, NULL::VARCHAR AS city_display"
)
_META = "batch_id, file, row_number"
# Latest version of a key wins: by its own time, then by the later ingested batch.
_LATEST = (
    "QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {time} DESC NULLS LAST, "
    "(SELECT ingested_at FROM ingest_batches b WHERE b.batch_id = r.batch_id) DESC, row_number DESC) = 1"
)


@dataclass(frozen=True)
class _Staged:
    """How one raw table becomes rows of a staged table: its key, its time and its SELECT list."""

    raw: str
    key: str  # the raw key column: the staged row of a key is the latest version of it
    time: str
    columns: str
    source: str | None = None  # stg_records.source; None for stg_consent
    finish: tuple[str, ...] = _EMAIL_FINISH  # the outer SELECT's columns, each replacing the inner one's

    def select(self, where: str = "true") -> str:
        """The staged rows of the raw rows matching ``where``: the latest version of each key."""
        return self.rows(f"{where} {_LATEST.format(key=self.key, time=self.time)}")

    def rows(self, where: str = "true") -> str:
        """Every raw row matching ``where`` (SQL over the raw table ``r``, which may end with a QUALIFY) as
        staging reads it."""
        inner = f"SELECT {self.columns} FROM {self.raw} r WHERE {where}"
        return f"SELECT * REPLACE ({', '.join(self.finish)}) FROM ({inner})"


RECORD_SOURCES: tuple[_Staged, ...] = (
    _Staged("raw_web", "event_id", "event_time", f"""
        'web' AS source, event_id AS source_record_id, 'web:' || trim(anonymous_id) AS unit_id,
        event_time AS record_time, lower(trim(event_type)) AS event_type,
        {_ids("user_id")}, NULL::VARCHAR AS loyalty_id, NULL::VARCHAR AS crm_id,
        {_ids("anonymous_id")}, NULL::VARCHAR AS device_id,
        {_email()},
        NULL::VARCHAR AS phone_e164, {_NULL_PERSON},
        {sql_trim_id("order_id")} AS order_id, revenue AS amount, upper(trim(currency)) AS currency,
        NULL::VARCHAR AS store_id, {_META}""", "web"),
    _Staged("raw_app", "event_id", "event_time", f"""
        'app' AS source, event_id AS source_record_id, 'app:' || trim(device_id) AS unit_id,
        event_time AS record_time, lower(trim(event_type)) AS event_type,
        {_ids("user_id")}, NULL AS loyalty_id, NULL AS crm_id, NULL AS anonymous_id, {_ids("device_id")},
        {_person()}, {_NULL_PERSON},
        {sql_trim_id("order_id")} AS order_id, revenue AS amount, upper(trim(currency)) AS currency,
        NULL AS store_id, {_META}""", "app"),
    _Staged("raw_store", "transaction_id", "transaction_time", f"""
        'store' AS source, transaction_id AS source_record_id, 'store:' || transaction_id AS unit_id,
        transaction_time AS record_time, 'purchase' AS event_type,
        NULL AS user_id, {_ids("loyalty_id")}, NULL AS crm_id, NULL AS anonymous_id, NULL AS device_id,
        {_person()},
        {_names()},
        NULL::DATE AS date_of_birth, NULL AS address_line1, NULL AS city,
        NULL AS address_line1_display, NULL AS city_display,
        {sql_normalise_postcode("postcode")} AS postcode, NULL AS country,
        transaction_id AS order_id, amount, upper(trim(currency)) AS currency, {_ids("store_id")}, {_META}""",
        "store", _NAMES_FINISH),
    _Staged("raw_crm", "crm_id", "coalesce(updated_at, created_at)", f"""
        'crm' AS source, crm_id AS source_record_id, 'crm:' || trim(crm_id) AS unit_id,
        coalesce(updated_at, created_at) AS record_time, 'crm_contact' AS event_type,
        {_ids("user_id", "loyalty_id", "crm_id")}, NULL AS anonymous_id, NULL AS device_id,
        {_person(region=PHONE_REGIONS["raw_crm"])},
        {_names()},
        {sql_plausible_dob("date_of_birth", "coalesce(updated_at, created_at)")} AS date_of_birth,
        NULLIF(trim(regexp_replace({sql_fold_accents('address_line1')}, '[^a-z0-9 ]+', ' ', 'g')), '')
            AS address_line1,
        NULLIF(lower(trim(city)), '') AS city, {sql_normalise_postcode("postcode")} AS postcode,
        {sql_written_name("address_line1", name=False)} AS address_line1_display,
        {sql_written_name("city", name=False)} AS city_display,
        NULLIF(upper(trim(country)), '') AS country,
        NULL AS order_id, NULL::DECIMAL(18,2) AS amount, NULL AS currency, NULL AS store_id, {_META}""", "crm",
        _ADDRESS_FINISH),
)  # fmt: skip

CONSENT_SOURCE = _Staged("raw_consent", "consent_id", "event_time", f"""
    consent_id, event_time, lower(trim(purpose)) AS purpose, lower(trim(status)) AS status,
    NULLIF(lower(trim(source)), '') AS source, NULLIF(trim(policy_version), '') AS policy_version,
    {_person()}, {_ids("user_id", "crm_id", "loyalty_id", "device_id", "anonymous_id")}, {_META}""")  # fmt: skip

#: The queries a full staging builds the staged tables from.
STG_RECORDS_SQL = " UNION ALL BY NAME ".join(s.select() for s in RECORD_SOURCES)
STG_CONSENT_SQL = CONSENT_SOURCE.select()
#: Columns of the staged tables that incremental runs look rows up by, stored plain (see cdp.store.UNCOMPRESSED).
STG_RECORDS_LOOKUPS = ("unit_id", "source_record_id")
STG_CONSENT_LOOKUPS = ("consent_id",)

#: Identity units whose staged records changed since identity resolution last ran; ``'*'``: all of them.
UNIT_CHANGES_DDL = "CREATE TABLE IF NOT EXISTS stg_unit_changes (unit_id VARCHAR)"
ALL_UNITS = "*"


#: The rules each staged table (and ``phone_map``) was built under: :func:`staging_fingerprint`.
BASIS_DDL = "CREATE TABLE IF NOT EXISTS staging_basis (table_name VARCHAR PRIMARY KEY, fingerprint VARCHAR)"


def staging_fingerprint(region: str) -> str:
    """The rules staging applies, as a hash: its SQL (which holds :mod:`identity.standardise`'s SQL forms),
    the module of the phone rule, the region national numbers default to and phonenumbers' metadata.

    Rows staged under other rules would stay as they were in an incremental run while a full one restages
    them: a table (or phone map) whose basis differs is built anew in full, and so is everything after it.
    """
    import phonenumbers

    from identity import standardise

    digest = hashlib.sha256()
    for part in (
        STG_RECORDS_SQL,
        STG_CONSENT_SQL,
        Path(standardise.__file__).read_text(),
        region,
        phonenumbers.__version__,
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def _basis(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
    rows = con.execute("SELECT fingerprint FROM staging_basis WHERE table_name = ?", [name]).fetchall()
    return str(rows[0][0]) if rows else None


def _can_stage_incrementally(con: duckdb.DuckDBPyConnection, table: str, fingerprint: str) -> bool:
    """The table was staged before, by batches, under the rules of ``fingerprint`` (phone map included)."""
    return (
        table_exists(con, table)
        and bool(con.execute("SELECT count(*) FROM staged_batches WHERE table_name = ?", [table]).fetchall()[0][0])
        and _basis(con, table) == _basis(con, "phone_map") == fingerprint
    )


def _restage_keys(
    con: duckdb.DuckDBPyConnection,
    table: str,
    sources: tuple[_Staged, ...],
    batches: dict[str, list[str]],
    key_column: str,
) -> None:
    """Re-stage every key that a row of ``batches`` (new batches per raw table) carries: its staged row is
    deleted and chosen anew among all its versions. One DELETE for every source (a pass over the staged table:
    one a source took 160 ms against 85 ms for a 1% batch of the 1M bench), then one INSERT from every
    source's raw table. A raw table is read by its own batches only: one with no new batch is not read."""
    sources = tuple(staged for staged in sources if staged.raw in batches)
    if not sources:
        return
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _restage AS "
        + " UNION ALL ".join(
            f"SELECT DISTINCT {_literal(staged.source)}::VARCHAR AS source, {staged.key} AS k FROM {staged.raw} "
            f"WHERE batch_id IN ({sql_strings(batches[staged.raw])})"
            for staged in sources
        )
    )
    if not con.execute("SELECT count(*) FROM _restage").fetchall()[0][0]:
        return
    # The staged rows of those keys, read once (the key alone first: DuckDB filters the scan with it, a Bloom
    # filter, before matching source and key). The old versions' units are read before they go, not returned
    # by the DELETE: DuckDB's DELETE ... RETURNING fetches every column of each deleted row (the 1M bench's
    # batch: 105-151 ms, against 69-77 ms for a SELECT and a plain DELETE).
    records = table == "stg_records"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _restaged_old AS
            SELECT {"source" if records else "NULL::VARCHAR AS source"}, {key_column} AS k
                   {", unit_id" if records else ""}
            FROM {table} WHERE {key_column} IN (SELECT k FROM _restage)
            {f"AND (source, {key_column}) IN (SELECT source, k FROM _restage)" if records else ""}"""
    )
    restaged = {row[0] for row in con.execute("SELECT DISTINCT source FROM _restaged_old").fetchall()}
    if restaged:
        if records:
            con.execute("INSERT INTO stg_unit_changes SELECT DISTINCT unit_id FROM _restaged_old")
        con.execute(
            f"DELETE FROM {table} WHERE {key_column} IN (SELECT k FROM _restaged_old)"
            + (f" AND (source, {key_column}) IN (SELECT source, k FROM _restaged_old)" if records else "")
        )
    # One INSERT for every source (each reading its raw table for its own keys): 199 against 217 ms for four on
    # the 1M bench's 1% batch. A source none of whose keys was staged before (new events, new receipts) has
    # every version of them in the new batches: those rows are read by their batch, a filter on a column of a
    # few distinct values, instead of matching every raw row's key.
    mine = "{key} IN (SELECT k FROM _restage WHERE source IS NOT DISTINCT FROM {source})"
    selects = " UNION ALL BY NAME ".join(
        "("
        + staged.select(
            mine.format(key=staged.key, source=_literal(staged.source))
            if staged.source in restaged
            else f"batch_id IN ({sql_strings(batches[staged.raw])}) AND {staged.key} IS NOT NULL"
        )
        + ")"
        for staged in sources
    )
    _noting_units(con, table, f"INSERT INTO {table} BY NAME {selects}")


def _noting_units(con: duckdb.DuckDBPyConnection, table: str, dml: str) -> None:
    """Run ``dml`` (an INSERT); for ``stg_records``, the units of the rows it inserted go to ``stg_unit_changes``:
    the new versions' units changed (the old versions' are noted before they are deleted). The statement hands
    them over itself (RETURNING, in a WITH), in SQL whatever the batch's size; reading them from stg_records
    after took another pass over it."""
    if table != "stg_records":
        con.execute(dml)
        return
    con.execute(
        f"WITH changed AS ({dml} RETURNING unit_id) INSERT INTO stg_unit_changes SELECT DISTINCT unit_id FROM changed"
    )


def _literal(value: str | None) -> str:
    """A source name (a constant of this module) as SQL."""
    return "NULL" if value is None else f"'{value}'"


def _stage(
    con: duckdb.DuckDBPyConnection,
    table: str,
    sources: tuple[_Staged, ...],
    full_sql: str,
    lookups: tuple[str, ...],
    key_column: str,
    region: str,
    incremental: bool,
) -> None:
    """Build ``table`` in full, or only for the keys new batches carry."""
    con.execute("SET TimeZone = 'UTC'")
    ensure_table(con, UNIT_CHANGES_DDL)
    ensure_table(con, BASIS_DDL)
    fingerprint = staging_fingerprint(region)
    raws = tuple(s.raw for s in sources)
    drop_primary_key(con, PHONE_MAP_DDL)
    incremental = incremental and _can_stage_incrementally(con, table, fingerprint)
    by_table = new_batches_by_table(con, "staged_batches", table, raws) if incremental else {}
    batches = sorted(batch for table_batches in by_table.values() for batch in table_batches)
    with transaction(con), email_functions(con):
        if _basis(con, "phone_map") != fingerprint:  # spellings read under other rules, or another region
            con.execute("DROP TABLE IF EXISTS phone_map")
        build_phone_map(con, region, prune=not incremental, batches=by_table if incremental else None)
        if not incremental:  # (an incremental run's table and phone map have this basis already)
            con.execute(
                "INSERT OR REPLACE INTO staging_basis VALUES (?, ?), ('phone_map', ?)",
                [table, fingerprint, fingerprint],
            )
            create_table_as(con, table, full_sql, uncompressed=lookups)
            forget_batches(con, "staged_batches", table)
            batches = batches_not_in(con, "staged_batches", table, raws)  # every batch, staged anew
            if table == "stg_records":
                con.execute("DELETE FROM stg_unit_changes")
                con.execute("INSERT INTO stg_unit_changes VALUES (?)", [ALL_UNITS])
        elif batches:
            _restage_keys(con, table, sources, by_table, key_column)
        record_batches(con, "staged_batches", table, batches)


def build_stg_records(con: duckdb.DuckDBPyConnection, region: str = "GB", incremental: bool = False) -> dict[str, int]:
    """Build ``stg_records`` from the raw record tables; returns row counts per source.

    With ``incremental`` (and a staged table to build on) only the keys that batches not yet staged
    carry are restaged, and their identity units are listed in ``stg_unit_changes`` for identity
    resolution; otherwise the table is rebuilt and ``stg_unit_changes`` says every unit changed.
    """
    _stage(
        con, "stg_records", RECORD_SOURCES, STG_RECORDS_SQL, STG_RECORDS_LOOKUPS, "source_record_id", region,
        incremental,
    )  # fmt: skip
    return dict(con.execute("SELECT source, count(*) FROM stg_records GROUP BY 1 ORDER BY 1").fetchall())


def build_stg_consent(con: duckdb.DuckDBPyConnection, region: str = "GB", incremental: bool = False) -> int:
    """Build ``stg_consent`` from ``raw_consent`` (in full, or for new batches' keys); returns its rows."""
    _stage(
        con, "stg_consent", (CONSENT_SOURCE,), STG_CONSENT_SQL, STG_CONSENT_LOOKUPS, "consent_id", region, incremental
    )  # fmt: skip
    return int(con.execute("SELECT count(*) FROM stg_consent").fetchall()[0][0])


def build_staging(con: duckdb.DuckDBPyConnection, region: str = "GB", incremental: bool = False) -> dict[str, int]:
    """Build both staged tables; returns row counts per source, consent included."""
    counts = build_stg_records(con, region, incremental)
    counts["consent"] = build_stg_consent(con, region, incremental)
    return counts
