"""Unified customer profiles: one golden record per customer, with the provenance of every chosen value.

Reads ``stg_records`` (one row per web/app event, store transaction and CRM contact) and
``customer_source_records`` (which customer each of those rows belongs to) and writes ``customer_profiles``:

* **Survivorship**, per field: the most recent non-empty value from the most trusted source, the order of
  trust being ``settings.survivorship`` (default crm, store, app, web). A source not in that order ranks
  last. Each chosen value keeps its source and time in ``<field>_source`` and ``<field>_at``.
* Names, address line and city are shown as written (capitalised when written all in one case: ``O'BRIEN``
  -> ``O'Brien``), not in the matching form; ``email`` is the deliverable address, ``phone`` the E.164
  number, ``postcode`` upper case without spaces (the form segments compare).
* **Traits**: first and last seen, channels used (web, app, store), orders and total spend across web, app
  and store, first and last purchase, stores visited, the latest app device (push contact point).

**Incremental updates**: given the customers whose records changed (a table of ``customer_id``, such as the
``_changed_customers`` that :func:`identity.changes.pending_customers` fills), only those customers' rows are
deleted and recomputed, from their own records; the result equals a full rebuild's rows. The table's comment
records the survivorship order it was built with, so a changed order is seen and answered with a full rebuild
(:func:`profiles_current`).

An order is a web/app ``purchase`` event or a store transaction; web and app purchase events repeating an
``order_id`` count once (at their largest amount). A transaction with a negative amount is a refund: it lowers
the total spend and is no order; refunds repeating an ``order_id`` count once too (the largest), so a refund
sent as a purchase event of its order's id takes that order's spend back. Spend is in the installation's
``currency`` (GBP unless set): an amount in another currency counts at its rate in ``exchange_rates``, and an
order in a currency without a rate (or an unknown one: ``$`` in a store selling in pounds; in one selling in
dollars it is theirs) counts as an order but not in the spend (``orders_in_other_currencies`` says how many).
The average order value is the spend over the orders whose amount counts in it.

Example::

    >>> import duckdb
    >>> from cdp.config import Settings
    >>> con = duckdb.connect()
    >>> build_customer_profiles(con, Settings())  # doctest: +SKIP
    {'profiles': 12, 'records': 40}
"""

from __future__ import annotations

import re
from collections.abc import Callable

import duckdb
import pandas as pd

from cdp.config import Settings
from cdp.store import code_digest, create_table_as, ensure_table, table_exists, transaction, unverify
from identity.changes import ALL_RECORDS, changed_records
from identity.graph import install_macros
from identity.standardise import sql_plausible_time

#: Fields chosen by survivorship: profile column -> stg_records column.
SURVIVING_FIELDS: dict[str, str] = {
    "first_name": "first_name",
    "last_name": "last_name",
    "email": "email",
    "phone": "phone_e164",
    "mobile": "mobile_e164",  # phone_e164 when it is a mobile number: the contact point of sms_marketing
    "date_of_birth": "date_of_birth",
    "address_line1": "address_line1",
    "city": "city",
    "postcode": "postcode",
    "country": "country",
}

#: Channels a customer can use (CRM is a system of record, not a channel).
CHANNELS = ("web", "app", "store")

#: Columns of ``customer_profiles`` a segment condition may read (the segment allow-list).
SEGMENT_COLUMNS: dict[str, str] = {
    "customer_id": "VARCHAR",
    "first_name": "VARCHAR",
    "last_name": "VARCHAR",
    "email": "VARCHAR",
    "phone": "VARCHAR",
    "mobile": "VARCHAR",
    "date_of_birth": "DATE",
    "city": "VARCHAR",
    "postcode": "VARCHAR",
    "country": "VARCHAR",
    "first_seen": "TIMESTAMP",
    "last_seen": "TIMESTAMP",
    "channels": "VARCHAR[]",
    "orders": "BIGINT",
    "total_spend": "DECIMAL(18,2)",
    "average_order_value": "DECIMAL(18,2)",
    "first_purchase_at": "TIMESTAMP",
    "last_purchase_at": "TIMESTAMP",
    "stores_visited": "BIGINT",
    "source_records": "BIGINT",
    "orders_in_other_currencies": "BIGINT",
}

_TITLE = (
    "array_to_string(list_transform(string_split({col}, ' '), lambda w: array_to_string("
    "list_transform(string_split(w, '-'), lambda p: upper(p[1]) || p[2:]), '-')), ' ')"
)


#: Profile fields shown as written (``<column>_display`` of ``stg_records``), not in matching form.
_DISPLAYED = ("first_name", "last_name", "address_line1", "city")

#: Profile fields whose placeholder values (graph.PLACEHOLDER_*) never win survivorship: (key type, column
#: in matching form that the placeholder rules read).
_PLACEHOLDER_CHECKS = {
    "email": ("email_key", "email_key"), "phone": ("phone_e164", "phone_e164"), "mobile": ("phone_e164", "mobile_e164"),
}  # fmt: skip


def _profile_sql(
    fields: dict[str, str],
    records: str = ALL_RECORDS,
    created: bool = False,
    arrived: bool = False,
    currency: str = "GBP",
    rates: dict[str, float] | None = None,
) -> str:
    """The profiles of the customers whose records are ``records`` (:data:`~identity.changes.ALL_RECORDS`, or
    some customers' rows of it: :func:`~identity.changes.changed_records`).
    With ``created`` (``raw_crm`` exists), a CRM contact counts as seen when it was created: its
    ``record_time`` is its last update, which a back-office edit moves and which is no sign of the customer.
    Spend is in ``currency``; an amount in another currency counts through ``rates`` (units of ``currency``
    per unit of it), and an order in a currency without a rate is counted but not summed. A record time that is
    a system default or later than a day after the record arrived (``arrived``: ``ingest_batches`` exists)
    counts for nothing: not as a customer seen, not as a purchase date, not as the newest value."""
    # One arg_min per field over a sort key (trust rank, newest first, then a stable tie-break) picks the value
    # with its source and time together; ordered first() aggregates did the same three times as slowly.
    key = "(source_rank, coalesce(-epoch_us(seen_time), 9223372036854775807), source, source_record_id)"
    picks = []
    for out, col in fields.items():
        value = f"{col}::VARCHAR" if col == "date_of_birth" else col
        if out in _DISPLAYED:  # as written, or the matching form (names capitalised)
            fallback = _TITLE.format(col=col) if out in ("first_name", "last_name") else col
            value = f"coalesce({col}_display, {fallback})"
        nonempty = f"{col} IS NOT NULL" + ("" if col == "date_of_birth" else f" AND trim({col}) <> ''")
        if out in _PLACEHOLDER_CHECKS:  # a CRM's "noemail@noemail.com" is nobody's contact point
            key_type, column = _PLACEHOLDER_CHECKS[out]
            nonempty += f" AND NOT ({column} IS NOT NULL AND cdp_is_placeholder('{key_type}', {column}))"
        picks.append(
            f"arg_min(struct_pack(v := {value}, s := source, t := record_time), {key}) "
            f"FILTER (WHERE {nonempty}) AS {out}_pick"
        )
    chosen = ", ".join(picks)
    shown = []
    for out in fields:
        v = f"c.{out}_pick.v"
        if out == "date_of_birth":
            shown.append(f"{v}::DATE AS {out}")
        else:
            shown.append(f"{v} AS {out}")
        shown.append(f"c.{out}_pick.s AS {out}_source, c.{out}_pick.t AS {out}_at")
    created_join = (
        "LEFT JOIN (SELECT batch_id, row_number, created_at FROM raw_crm) rc "
        "ON r.source = 'crm' AND rc.batch_id = r.batch_id AND rc.row_number = r.row_number"
        if created
        else ""
    )
    first_time = "least(seen_time, seen_created)" if created else "seen_time"
    last_time = "CASE WHEN source = 'crm' THEN coalesce(seen_created, seen_time) ELSE seen_time END"
    last_time = last_time if created else "seen_time"
    at = "b.ingested_at" if arrived else None
    seen = f"{sql_plausible_time('r.record_time', at)} AS seen_time"
    if created:
        seen += f", {sql_plausible_time('rc.created_at', at)} AS seen_created"
    arrived_join = "LEFT JOIN ingest_batches b ON b.batch_id = r.batch_id" if arrived else ""
    # An order's amount in the profiles' currency: as recorded (no currency: the profiles'), or at a rate.
    converted = " ".join(
        f"WHEN '{code}' THEN amount * {float(rate)!r}::DECIMAL(18,6)" for code, rate in sorted((rates or {}).items())
    )
    # A sign of several currencies ('$', kept by ingestion when no code came with it) is the installation's own
    # when its currency is one of them: '$' in a store selling in USD is dollars.
    signs = [sign for sign, codes in SIGN_CURRENCIES.items() if currency in codes]
    written = f"coalesce(currency, '{currency}')"
    if signs:
        written = f"CASE WHEN currency IN ({', '.join(repr(s) for s in signs)}) THEN '{currency}' ELSE {written} END"
    in_currency = f"CASE {written} WHEN '{currency}' THEN amount {converted} END"
    return f"""
    WITH linked AS (
        SELECT r.*, {"rc.created_at," if created else ""}
               coalesce(list_position(?::VARCHAR[], r.source), 1000) AS source_rank, {seen},
               CASE WHEN k.mobile THEN r.phone_e164 END AS mobile_e164
        FROM {records} r
        LEFT JOIN _phone_kinds k USING (phone_e164)
        {created_join}
        {arrived_join}
    ),
    chosen AS (
        SELECT customer_id, {chosen},
               first(device_id ORDER BY record_time DESC NULLS LAST, source_record_id)
                   FILTER (WHERE source = 'app' AND device_id IS NOT NULL) AS device_id,
               min({first_time}) AS first_seen, max({last_time}) AS last_seen,
               coalesce(list_sort(list_distinct(list(source) FILTER (WHERE source IN {CHANNELS}))), [])
                   AS channels,
               count(DISTINCT store_id) FILTER (WHERE source = 'store') AS stores_visited,
               count(*) AS source_records
        FROM linked GROUP BY customer_id
    ),
    orders AS (  -- one row per order: web/app purchases folded by order_id (refunds apart), each store transaction
        SELECT customer_id, order_key, refund, CASE WHEN refund THEN min(amount) ELSE max(amount) END AS amount,
               CASE WHEN refund THEN min(in_currency) ELSE max(in_currency) END AS in_currency,
               min(seen_time) AS ordered_at
        FROM (
            SELECT customer_id, amount, {in_currency} AS in_currency, seen_time,
                   coalesce(amount < 0, false) AS refund,
                   CASE WHEN source = 'store' THEN 'store:' || source_record_id
                        ELSE coalesce('order:' || order_id, source || ':' || source_record_id)
                   END AS order_key
            FROM linked
            WHERE source = 'store' OR (source IN ('web', 'app') AND event_type = 'purchase')
        ) GROUP BY customer_id, order_key, refund
    ),
    spend AS (
        SELECT customer_id, count(*) FILTER (WHERE NOT refund) AS orders,
               sum(in_currency)::DECIMAL(18,2) AS total_spend,
               count(*) FILTER (WHERE NOT refund AND in_currency IS NULL AND amount IS NOT NULL)
                   AS orders_in_other_currencies,
               count(*) FILTER (WHERE NOT refund AND in_currency IS NOT NULL) AS priced_orders,
               min(ordered_at) FILTER (WHERE NOT refund) AS first_purchase_at,
               max(ordered_at) FILTER (WHERE NOT refund) AS last_purchase_at
        FROM orders GROUP BY customer_id
    )
    SELECT c.customer_id, {", ".join(shown)},
           c.device_id, c.first_seen, c.last_seen, c.channels,
           coalesce(s.orders, 0) AS orders, coalesce(s.total_spend, 0)::DECIMAL(18,2) AS total_spend,
           CASE WHEN s.priced_orders > 0 THEN (s.total_spend / s.priced_orders)::DECIMAL(18,2)
           END AS average_order_value,
           s.first_purchase_at, s.last_purchase_at, c.stores_visited, c.source_records,
           coalesce(s.orders_in_other_currencies, 0) AS orders_in_other_currencies
    FROM chosen c LEFT JOIN spend s USING (customer_id)
    ORDER BY c.customer_id
    """


def phone_kinds(phones: list[str]) -> pd.DataFrame:
    """``phone_e164, mobile``: whether each E.164 number is a mobile (or fixed-line-or-mobile) number.

    Uses phonenumbers' metadata. Parsing is slow (about 0.25 ms), so numbers are classified by their first
    eight characters (country code and the leading digits that decide the type in national numbering
    plans) and their length, parsing one number per pair: a number too short or too long for its plan is no
    mobile, and its mistake must not decide for a real mobile sharing its first digits (nor the reverse).
    """
    import phonenumbers

    mobile_types = {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
    by_prefix: dict[tuple[str, int], bool] = {}
    flags = []
    for phone in phones:
        prefix = (phone[:8], len(phone))
        if prefix not in by_prefix:
            try:
                by_prefix[prefix] = phonenumbers.number_type(phonenumbers.parse(phone)) in mobile_types
            except phonenumbers.NumberParseException:
                by_prefix[prefix] = False
        flags.append(by_prefix[prefix])
    return pd.DataFrame({"phone_e164": pd.Series(phones, dtype="string"), "mobile": flags})


#: What :func:`phone_kinds` found per prefix and length, kept between runs (per phonenumbers release, whose
#: metadata decides): a batch's phones are nearly all of prefixes seen before, and parsing one number of each
#: of the 1,577 pairs a 1% batch of the 1M bench holds took 42 ms. Prefixes of eight characters (country code
#: and leading digits) are a numbering plan's ranges, no one's number (consent.erasure.KEPT_TABLES).
PHONE_PREFIX_KINDS_DDL = """CREATE TABLE IF NOT EXISTS phone_prefix_kinds (
    prefix VARCHAR, length INTEGER, mobile BOOLEAN, metadata VARCHAR)"""


def _phone_kinds_table(con: duckdb.DuckDBPyConnection, records: str) -> None:
    """Temp table ``_phone_kinds(phone_e164, mobile)`` for the phones of ``records`` only (not every phone in
    ``stg_records``), from ``phone_prefix_kinds``; the prefixes it lacks are classified (:func:`phone_kinds`,
    by the smallest number of each) and kept there."""
    import phonenumbers

    release = phonenumbers.__version__
    ensure_table(con, PHONE_PREFIX_KINDS_DDL)
    # The phones are read once (in a full build, a pass over every staged record joined to its customer).
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _phones AS
            SELECT DISTINCT phone_e164 FROM {records} WHERE phone_e164 IS NOT NULL"""
    )
    kinds = "(SELECT * FROM phone_prefix_kinds WHERE metadata = $release)"
    missing = con.execute(
        f"""SELECT min(p.phone_e164) FROM _phones p
            ANTI JOIN {kinds} k ON k.prefix = left(p.phone_e164, 8) AND k.length = length(p.phone_e164)
            GROUP BY left(p.phone_e164, 8), length(p.phone_e164)""",
        {"release": release},
    ).fetchall()
    if missing:
        with transaction(con):  # whatever the release, one verdict a prefix: older releases' go
            con.execute("DELETE FROM phone_prefix_kinds WHERE metadata <> $release", {"release": release})
            classified = phone_kinds([phone for (phone,) in missing])  # noqa: F841  (read by DuckDB below)
            con.execute(
                """INSERT INTO phone_prefix_kinds
                   SELECT left(phone_e164, 8), length(phone_e164), mobile, $release FROM classified""",
                {"release": release},
            )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _phone_kinds AS
            SELECT p.phone_e164, k.mobile FROM _phones p
            JOIN {kinds} k ON k.prefix = left(p.phone_e164, 8) AND k.length = length(p.phone_e164)""",
        {"release": release},
    )
    con.execute("DROP TABLE _phones")


#: Currency signs that name several currencies (ingestion keeps them as the currency of an amount written with
#: one and no code), and the currencies each may be: an installation in one of them reads the sign as its own.
SIGN_CURRENCIES = {
    "$": ("USD", "CAD", "AUD", "NZD", "SGD", "HKD", "MXN", "TWD"),
    "¥": ("JPY", "CNY"),
}

#: Names a caller may pass as the table of changed customers: a plain identifier, never user text.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Version of the table's shape and rules; bump it when the columns or the choice of values change, so that
#: stored tables are rebuilt in full. 2: placeholder emails and phones never win survivorship. 3: a refund
#: (negative amount) is no order. 4: a CRM contact is first seen at its created_at. 5: names as written
#: (``first_name_display``), not the matching form capitalised. 6: address and city as written, last_seen
#: not moved by CRM edits, channels [] not NULL, spend in one currency (``orders_in_other_currencies``).
#: 7: implausible record times (before 1990, or a day after the record arrived) count for nothing.
#: 8: a refund of an order id takes back that order's spend; the average order value is over priced orders;
#: a number of the wrong length for its plan is no mobile (nor decides for one sharing its first digits).
_PROFILES_VERSION = "8"


def _fingerprint(settings: Settings) -> str:
    """What a stored ``customer_profiles`` must have been built with for an incremental update to be exact."""
    rates = ",".join(f"{c}={r!r}" for c, r in sorted(settings.exchange_rates.items()))
    return (
        f"customer_profiles v{_PROFILES_VERSION} (code {code_digest(__file__)}); "
        f"survivorship={','.join(settings.survivorship)}; currency={settings.currency}; rates={rates}"
    )


def profiles_current(con: duckdb.DuckDBPyConnection, settings: Settings) -> bool:
    """Whether ``customer_profiles`` exists and was built by this code with ``settings``' survivorship order,
    so that updating only some customers gives what a full rebuild would."""
    rows = con.execute(
        "SELECT comment FROM duckdb_tables() WHERE table_name = 'customer_profiles' AND NOT temporary"
    ).fetchall()
    return bool(rows) and rows[0][0] == _fingerprint(settings)


def build_customer_profiles(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    customers: str | None = None,
    *,
    records: str | None = None,
    before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> dict[str, int]:
    """(Re)build ``customer_profiles`` from ``stg_records`` and ``customer_source_records``.

    ``customers``: the name of a table with a ``customer_id`` column (``_changed_customers``). Given, only
    those customers' profiles are deleted and recomputed (those left without records stay deleted), from
    their own records; the table must be :func:`profiles_current`. ``None``: every profile is rebuilt.
    ``records``: a temp table holding those customers' staged records (:func:`identity.changes.records_of_run`),
    else they are read here. ``before_commit`` runs inside the same transaction, just before it commits (to
    mark a change consumer).

    Returns counts only (no personal data): profiles in the table and the source records they draw on, and
    with ``customers`` also ``customers_recomputed`` (the size of that set).
    """
    if customers is not None:
        for name in (customers, records or customers):
            if not _TABLE_NAME.fullmatch(name):
                raise ValueError(f"not a table name: {name!r}")
        if not profiles_current(con, settings):
            raise ValueError("customer_profiles is missing or was built otherwise; rebuild it in full")
    read = ALL_RECORDS
    params = [list(settings.survivorship)]
    recomputed = None
    try:
        if customers is not None:
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE _profile_customers AS
                    SELECT DISTINCT customer_id FROM {customers} WHERE customer_id IS NOT NULL"""
            )
            recomputed = int(con.execute("SELECT count(*) FROM _profile_customers").fetchall()[0][0])
        if recomputed == 0:  # nobody changed (a run with nothing new): nothing to read, plan or write
            with transaction(con):
                if before_commit is not None:
                    before_commit(con)
            return _profile_counts(con, recomputed)
        if customers is not None:
            read = records or changed_records(con, "_profile_customers", "_profile_records")
        _phone_kinds_table(con, read)
        install_macros(con)  # cdp_is_placeholder
        sql = _profile_sql(
            SURVIVING_FIELDS,
            read,
            created=table_exists(con, "raw_crm"),
            arrived=table_exists(con, "ingest_batches"),
            currency=settings.currency,
            rates=settings.exchange_rates,
        )
        with transaction(con):
            if customers is None:
                # The customer id is stored plain: updates and checks look profiles up by it (cdp.store.UNCOMPRESSED).
                create_table_as(con, "customer_profiles", sql, params, uncompressed=("customer_id",))
                # The fingerprint lives with the table, so it goes when the table is rebuilt or dropped. COMMENT
                # takes no parameter: the order's quotes are doubled.
                note = _fingerprint(settings).replace("'", "''")
                con.execute(f"COMMENT ON TABLE customer_profiles IS '{note}'")
            else:
                con.execute(
                    "DELETE FROM customer_profiles WHERE customer_id IN (SELECT customer_id FROM _profile_customers)"
                )
                con.execute(f"INSERT INTO customer_profiles {sql}", params)
            unverify(con, "customer_profiles")  # its checks look again (cdp.store.CHECK_PASSES_DDL)
            if before_commit is not None:
                before_commit(con)
    finally:
        con.execute("DROP TABLE IF EXISTS _phone_kinds")
        con.execute("DROP TABLE IF EXISTS _profile_customers")
        con.execute("DROP TABLE IF EXISTS _profile_records")
    return _profile_counts(con, recomputed)


def _profile_counts(con: duckdb.DuckDBPyConnection, recomputed: int | None) -> dict[str, int]:
    """What :func:`build_customer_profiles` returns: profiles, the records they draw on, and the customers it
    recomputed (when it updated some, not all)."""
    profiles, linked = con.execute(
        "SELECT count(*), coalesce(sum(source_records), 0) FROM customer_profiles"
    ).fetchall()[0]
    counts = {"profiles": int(profiles), "records": int(linked)}
    if recomputed is not None:
        counts["customers_recomputed"] = recomputed
    return counts


def find_customers(
    con: duckdb.DuckDBPyConnection,
    *,
    email: str | None = None,
    phone: str | None = None,
    customer_id: str | None = None,
    region: str = "GB",
) -> list[str]:
    """Customer ids whose records carry the email (by match key) or phone, or the id itself.

    A retired customer id (merged into another) is followed through ``customer_id_history`` when present.
    """
    from cdp.errors import CdpError
    from cdp.store import table_exists
    from identity.standardise import email_match_key, normalise_customer_id, normalise_phone

    if sum(v is not None for v in (email, phone, customer_id)) != 1:
        raise CdpError("give exactly one of --email, --phone, --customer-id")
    if not table_exists(con, "customer_profiles"):
        raise CdpError("no customer profiles yet; run `cdp run --inbox DIR` first")
    if customer_id is not None:
        seen: set[str] = set()
        frontier = {normalise_customer_id(customer_id)}
        has_history = table_exists(con, "customer_id_history")
        while frontier:
            found = [c for c in sorted(frontier) if _has_profile(con, c)]
            if found or not has_history:
                return found
            seen |= frontier
            nxt = {
                r[0]
                for c in frontier
                for r in con.execute(
                    "SELECT new_customer_id FROM customer_id_history WHERE old_customer_id = ?", [c]
                ).fetchall()
            }
            frontier = nxt - seen
        return []
    if email is not None:
        key = email_match_key(email)
        if key is None:
            raise CdpError(f"--email {email!r} is not a valid email address")
        column, value = "email_key", key
    else:
        e164 = normalise_phone(phone, region)
        if e164 is None:
            raise CdpError(f"--phone {phone!r} is not a valid phone number (default region {region})")
        column, value = "phone_e164", e164
    rows = con.execute(
        f"""SELECT DISTINCT l.customer_id FROM stg_records r
            JOIN customer_source_records l USING (source, source_record_id)
            WHERE r.{column} = ? ORDER BY 1""",  # column chosen above from two constants
        [value],
    ).fetchall()
    return [r[0] for r in rows]


def _has_profile(con: duckdb.DuckDBPyConnection, customer_id: str) -> bool:
    sql = "SELECT count(*) FROM customer_profiles WHERE customer_id = ?"
    return bool(con.execute(sql, [customer_id]).fetchall()[0][0])


def profile_detail(con: duckdb.DuckDBPyConnection, customer_id: str) -> dict[str, object]:
    """One profile as a dict, with its linked source records (newest first) under ``records``."""
    profile = con.execute("SELECT * FROM customer_profiles WHERE customer_id = ?", [customer_id]).df()
    if profile.empty:
        from cdp.errors import CdpError

        raise CdpError(f"no profile with customer id {customer_id!r}")
    records = con.execute(
        """SELECT r.source, r.source_record_id, r.record_time, r.event_type, r.email, r.phone_e164,
                  r.first_name, r.last_name, r.postcode, r.order_id, r.amount, r.store_id
           FROM customer_source_records l JOIN stg_records r USING (source, source_record_id)
           WHERE l.customer_id = ? ORDER BY r.record_time DESC NULLS LAST, r.source, r.source_record_id""",
        [customer_id],
    ).df()
    detail: dict[str, object] = profile.to_dict("records")[0]
    detail["records"] = records
    return detail
