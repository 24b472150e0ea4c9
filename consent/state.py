"""Consent state: the ledger resolved per customer and purpose through the identity graph.

Computed from the whole ledger, so that an event naming an identifier the platform had not seen when it
arrived applies as soon as a record carrying that identifier is linked to a customer. After the first full
computation it can be updated for the customers whose state may have changed only (the customers whose
identifier values identity changed, the customers the events naming those values reach, and the customers that
new or newly current events reach; see :func:`build_consent_state`), with the same result as a full rebuild.

Rules, in the order they are applied:

1. An event reaches a customer when any identifier it names (email match key, E.164 phone, user id, CRM id,
   loyalty id, device id, anonymous id) is carried by one of that customer's ``stg_records`` rows.
2. An identifier carried by several customers (a household phone, a shared device) is ambiguous. Deliberate
   choice, the safe side for the people concerned:

   * a **withdrawal** applies to every customer it reaches, through any identifier, ambiguous or not;
   * a **grant** applies only through identifiers that each belong to exactly one customer, and only when
     those all point to the same customer. A grant that names only a household phone grants nothing.

3. Per customer and purpose the latest applicable event wins, whichever identifier it came through; at the
   same instant a withdrawal beats a grant. Events later than ``as_of`` do not apply yet, except a
   withdrawal dated after the moment the ledger recorded it (a till's clock ahead, local time written as
   UTC): it is in force from that moment, since nobody withdraws for later. So is a withdrawal dated before
   1990 (a system's default time, 1970-01-01): when it was given is unknown, and the safe side is the latest
   it can have been. A grant dated ahead waits for its date (:func:`in_force`), but it happened by the time
   it was recorded: a withdrawal recorded after it wins, whatever the grant's date says (:func:`happened`).
4. No event means no consent: customers without a row in ``consent_state`` for a purpose may not be
   contacted for it (see :mod:`consent.enforce`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from cdp.store import UNCOMPRESSED, code_digest, ensure_table, table_exists, transaction, unverify
from consent import ledger
from consent.ledger import EVENT_IDENTIFIERS, ensure_ledger
from identity.changes import ALL_RECORDS, changed_records
from identity.standardise import EARLIEST_PLAUSIBLE_TIME

# The columns updates look rows up by are stored plain (cdp.store.UNCOMPRESSED), here and in BASIS_DDL. A full
# computation drops and declares these tables anew, so that a store made before takes these options too. One row
# per customer and purpose by construction (the state is grouped so), without a primary key's index to write at
# every checkpoint (cdp.store.drop_primary_key); the consent_state_traces_to_ledger check counts duplicates.
STATE_DDL = f"""CREATE TABLE IF NOT EXISTS consent_state (
    customer_id VARCHAR {UNCOMPRESSED}, purpose VARCHAR, status VARCHAR, updated_at TIMESTAMP, source VARCHAR,
    event_id VARCHAR, origin VARCHAR, policy_version VARCHAR, via VARCHAR, computed_at TIMESTAMP)"""

_IDS = ", ".join(EVENT_IDENTIFIERS)
#: The columns of a customer's state for a purpose, apart from its key and computed_at.
_STATE_VALUES = ("status", "updated_at", "source", "event_id", "origin", "policy_version", "via")


def loose_email(col: str) -> str:
    """A forgiving key for a mistyped email: the local part without punctuation or +tag, and the first label of
    the domain (``ptaylor@@virginmedia.com``, ``p.taylor@virginmedia.con`` and ``ptaylor@virginmedia.co`` all
    give ``ptaylor@virginmedia``). Letters beyond ASCII are left out, and a label in its ASCII form keeps only
    the ASCII letters it spells (``xn--bcher-kva``: ``bcher``), so that ``jörg@bücher.con`` as typed and
    ``jörg@xn--bcher-kva.de`` as staged both give ``jrg@bcher``."""
    e = f"lower(regexp_replace({col}, '\\s', '', 'g'))"
    local = f"regexp_replace(split_part(split_part({e}, '@', 1), '+', 1), '[^a-z0-9]', '', 'g')"
    label = f"split_part(regexp_extract({e}, '@+([^@]*)$', 1), '.', 1)"
    # Punycode (RFC 3492) writes a label's ASCII letters first, then a hyphen and the encoded rest.
    ascii_part = (
        f"CASE WHEN starts_with({label}, 'xn--') THEN regexp_extract({label}, '^xn--(.*)-', 1) ELSE {label} END"
    )
    domain = f"regexp_replace({ascii_part}, '[^a-z0-9]', '', 'g')"
    return f"(nullif({local}, '') || '@' || nullif({domain}, ''))"


def _ids_sql(loose: bool, records: str = ALL_RECORDS) -> str:
    """``(customer_id, kind, value)`` of every identifier value the customers' records carry, with the loose
    email key of each of their emails (kind ``email_loose``) when loose withdrawals apply; ``records`` (some
    rows of :data:`~identity.changes.ALL_RECORDS`: :func:`~identity.changes.changed_records`) restricts them
    to some customers'. One pass over the records (NULL values are left out)."""
    extra = f", {loose_email('r.email')} AS email_loose" if loose else ""
    kinds = _IDS + (", email_loose" if loose else "")
    return f"""
    SELECT DISTINCT customer_id, kind, value FROM (
        UNPIVOT (SELECT r.customer_id, {", ".join(f"r.{c}" for c in EVENT_IDENTIFIERS)}{extra} FROM {records} r)
        ON {kinds} INTO NAME kind VALUE value)"""


def in_force(alias: str = "") -> str:
    """SQL: when a ledger event (``alias``: the table's alias and a dot, or nothing) comes into force: its
    ``event_time``, or for a withdrawal dated after the ledger recorded it or at a system's default time
    (before :data:`~identity.standardise.EARLIEST_PLAUSIBLE_TIME`), the moment it was recorded."""
    a = alias
    return (
        f"CASE WHEN {a}status = 'withdrawn' AND ({a}event_time > {a}recorded_at "
        f"OR {a}event_time < TIMESTAMP '{EARLIEST_PLAUSIBLE_TIME:%Y-%m-%d}') "
        f"THEN {a}recorded_at ELSE {a}event_time END"
    )


def happened(alias: str = "") -> str:
    """SQL: the time a ledger event is ordered by against the others: a withdrawal's :func:`in_force`, a grant's
    ``event_time`` or, for one dated after the ledger recorded it, the moment it was recorded."""
    a = alias
    return f"CASE WHEN {a}status = 'withdrawn' THEN {in_force(alias)} ELSE least({a}event_time, {a}recorded_at) END"


def _event_ids_sql(events: str | None = None, until: str = "$as_of", ledger: str = "consent_events") -> str:
    """``(event_id, kind, value)`` of the identifiers applicable events (in force by ``until``) name.
    ``ledger`` may be a temp table holding some rows of ``consent_events``."""
    only = f"AND event_id IN (SELECT event_id FROM {events})" if events else ""
    return f"""
    SELECT DISTINCT event_id, kind, value FROM (
        UNPIVOT (SELECT event_id, {_IDS} FROM {ledger} WHERE {in_force()} <= {until} {only})
        ON {_IDS} INTO NAME kind VALUE value)"""


def _naming_bucket(buckets: str) -> str:
    """Predicate over ``consent_events``: the event names a value whose :data:`_BUCKET` is in table ``buckets``."""
    bucket = _BUCKET.replace("kind", "'{c}'").replace("value", "{c}")
    return " OR ".join(
        f"({c} IS NOT NULL AND {bucket.format(c=c)} IN (SELECT bucket FROM {buckets}))" for c in EVENT_IDENTIFIERS
    )


def _naming_value(values: str) -> str:
    """Predicate over ``consent_events``: the event names one of the ``(kind, value)`` of table ``values`` (one
    probe per identifier column, not an unpivot of the whole ledger)."""
    return " OR ".join(f"{c} IN (SELECT value FROM {values} WHERE kind = '{c}')" for c in EVENT_IDENTIFIERS)


def _loose_candidates(until: str = "$as_of") -> str:
    """``(event_id, in_force, value)``: withdrawals from the consent source with the loose key of their email
    as written in ``raw_consent``, through which they reach customers too."""
    return f"""
    SELECT ev.event_id, {in_force("ev.")} AS in_force, {loose_email("rc.email")} AS value
    FROM consent_events ev JOIN raw_consent rc ON rc.batch_id = ev.batch_id AND rc.row_number = ev.row_number
    WHERE ev.origin = 'consent' AND ev.status = 'withdrawn' AND {in_force("ev.")} <= {until}
      AND rc.email IS NOT NULL AND trim(rc.email) <> ''"""


def hits_sql(
    loose_withdrawals: bool,
    ids: str = "_consent_ids",
    events: str | None = None,
    ledger: str = "consent_events",
    loose: str | None = None,
) -> str:
    """SQL of every (event, customer, identifier kind) an event reaches, with the kind's fan-out (customers
    carrying that value) and ``n``, the number of customers the event reaches through unambiguous kinds.

    ``ids`` is a table of ``(customer_id, kind, value)``: :func:`_ids_sql` over every customer, or, for an
    incremental update, over every customer carrying a value that the events in ``events`` (a table of
    ``event_id``) name: fan-outs and ``n`` are then still global facts.

    With ``loose_withdrawals`` (``raw_consent`` present), a withdrawal also reaches customers through
    :func:`loose_email` of its email as written: a typo the standardiser could not read, or a mistyped domain,
    still reaches the customer meant, even once a record carrying the same typo links it to someone else (a
    till's receipt with the typed address: the withdrawal used to move to that receipt's customer). Only
    withdrawals: applying a withdrawal too widely costs a marketing message, a grant applied too widely would
    be a breach. Nothing new is stored: the spelling is read from ``raw_consent`` through the event's batch
    and row.

    An update passes ``ledger``, the rows of ``consent_events`` for ``events``, and ``loose``, the loose
    candidates already read (:func:`_loose_candidates`, of events up to ``$as_of`` or later), so that neither
    the ledger nor ``raw_consent`` is read again.
    """
    loose_events = ""
    if loose_withdrawals:
        only = f"AND event_id IN (SELECT event_id FROM {events})" if events else ""
        candidates = f"SELECT * FROM {loose} WHERE in_force <= $as_of" if loose else _loose_candidates()
        loose_events = f"""
        UNION
        SELECT event_id, 'email_loose' AS kind, value FROM ({candidates}) c WHERE true {only}"""
    return f"""
WITH fanout AS (SELECT kind, value, count(*) AS customers FROM {ids} GROUP BY kind, value),
event_ids AS ({_event_ids_sql(events, ledger=ledger)} {loose_events}),
hits AS (
    SELECT e.event_id, c.customer_id, e.kind, f.customers
    FROM event_ids e JOIN {ids} c USING (kind, value) JOIN fanout f USING (kind, value)
),
unique_targets AS (  -- customers reached through unambiguous identifiers, per event
    SELECT event_id, count(DISTINCT customer_id) AS n FROM hits WHERE customers = 1 AND kind <> 'email_loose'
    GROUP BY event_id
)
SELECT h.*, coalesce(u.n, 0) AS n FROM hits h LEFT JOIN unique_targets u USING (event_id)
"""


#: From ``_consent_hits``: the latest applicable event per customer and purpose (rules 2 and 3 above); ``{only}``
#: may restrict the customers written, and ``{ledger}`` is ``consent_events`` or a temp table holding the rows
#: of every event in the hits.
_STATE_SQL = """
WITH applicable AS (
    SELECT h.event_id, h.customer_id,  -- the loose key only when nothing exact reached the customer
           coalesce(string_agg(DISTINCT h.kind, ',' ORDER BY h.kind) FILTER (WHERE h.kind <> 'email_loose'),
                    'email_loose') AS via
    FROM _consent_hits h JOIN {ledger} ev USING (event_id)
    WHERE (ev.status = 'withdrawn' OR (h.customers = 1 AND h.n = 1 AND h.kind <> 'email_loose')) {only}
    GROUP BY h.event_id, h.customer_id
)
SELECT a.customer_id, ev.purpose, ev.status, ev.event_time AS updated_at, ev.source, ev.event_id,
       ev.origin, ev.policy_version, a.via, $as_of::TIMESTAMP AS computed_at
FROM applicable a JOIN {ledger} ev USING (event_id)
QUALIFY row_number() OVER (
    PARTITION BY a.customer_id, ev.purpose
    ORDER BY {happened} DESC, (ev.status = 'withdrawn') DESC, ev.event_id DESC) = 1
""".replace("{happened}", happened("ev."))

# What an incremental update needs to know about the last computation:
#   consent_state_basis  one row: the as_of it used, whether loose withdrawals applied, and BASIS_VERSION;
#   consent_state_seen_batches  the batches (origin, batch_id) of the ledger events it had seen (applied, or
#                        dated after its as_of): a sync appends each batch's events at once, in one statement
#                        (consent.ledger), so an event of a batch seen was seen. New events are found by their
#                        batch: a pass over two columns of few values, where matching every event's id against
#                        the ids seen took 24 ms on the 1M bench's batch (61 ms in a process's first pass);
#   consent_state_seen   the ids of the events it had seen that came without a batch (rows staged by hand,
#                        compared on every sync): usually none;
#   consent_state_keys   (customer_id, kind, value, bucket): every identifier value each customer's records
#                        carry (:func:`_ids_sql`: personal data, erased with the customer), and its 24-bit hash
#                        bucket. An update reads the carriers of the values its events name, and the values of
#                        the customers it recomputes, here instead of in every staged record (at 1M records:
#                        two passes over stg_records and two over customer_source_records). Old values of a
#                        changed customer are found here too, by bucket (a CRM contact's new phone leaves the
#                        old number's other carriers with a new fan-out: the events naming the old number,
#                        found by its bucket, reach them). A bucket stands for many values; a shared bucket
#                        only recomputes a few customers more than needed: exactness comes from the values.
BASIS_DDL = [
    "CREATE TABLE IF NOT EXISTS consent_state_basis (as_of TIMESTAMP, loose BOOLEAN, version VARCHAR)",
    "CREATE TABLE IF NOT EXISTS consent_state_seen_batches (origin VARCHAR, batch_id VARCHAR)",
    f"CREATE TABLE IF NOT EXISTS consent_state_seen (event_id VARCHAR {UNCOMPRESSED})",
    f"""CREATE TABLE IF NOT EXISTS consent_state_keys (
        customer_id VARCHAR {UNCOMPRESSED}, kind VARCHAR, "value" VARCHAR {UNCOMPRESSED}, bucket INTEGER)""",
]
_BUCKET = "(hash(kind, value) & 16777215)::INTEGER"
#: SQL over ``consent_events``: the event is not among those the last computation saw (``consent_state_seen_batches``
#: and ``consent_state_seen``).
_UNSEEN = """CASE WHEN batch_id IS NULL THEN event_id NOT IN (SELECT event_id FROM consent_state_seen)
                 ELSE (origin, batch_id) NOT IN (SELECT (origin, batch_id) FROM consent_state_seen_batches) END"""
#: DuckDB's hash() may change between versions: the stored buckets are only trusted under the same one. The
#: code of the rules (this module's and the ledger's) is part of it too, so that an edit to them makes the next
#: computation full even when nobody bumps the version.
#: v2: withdrawals dated ahead in force; v3: loose email keys of internationalised domains (loose_email);
#: v4: events ordered by :func:`happened`, withdrawals at a default time in force when recorded; loose
#: withdrawals whatever their exact email key reaches; v5: consent_state_keys holds the values themselves.
BASIS_VERSION = f"consent_state v5 (code {code_digest(__file__, ledger.__file__)}); duckdb {duckdb.__version__}"

#: Names a caller may pass as the table of changed customers: a plain identifier, never user text.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def ensure_state(con: duckdb.DuckDBPyConnection) -> None:
    ensure_table(con, STATE_DDL)


def state_current(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``consent_state`` can be updated for some customers only: it was computed by this code, with
    the same DuckDB and the same reach for loose withdrawals, and records what it saw."""
    if not all(table_exists(con, t) for t in ("consent_state", "consent_state_basis", "stg_records")):
        return False
    if not table_exists(con, "customer_source_records"):
        return False
    rows = con.execute("SELECT loose, version FROM consent_state_basis").fetchall()
    return rows == [(table_exists(con, "raw_consent"), BASIS_VERSION)]


#: The customers the latest computation recomputed: every row it wrote, and every row of a customer it
#: recomputed, carries its ``as_of`` as ``computed_at`` (a customer whose rows all ended has none left).
RECOMPUTED_CUSTOMERS = (
    "SELECT DISTINCT customer_id FROM consent_state WHERE computed_at = (SELECT as_of FROM consent_state_basis)"
)


def build_consent_state(
    con: duckdb.DuckDBPyConnection,
    as_of: datetime | None = None,
    customers: str | None = None,
    *,
    records: str | None = None,
    before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> dict[str, int]:
    """Rebuild ``consent_state`` from the whole ledger, or update it for the customers it may have changed for.

    ``customers``: the name of a table with a ``customer_id`` column, the customers whose records changed
    since the last computation (``_changed_customers``); the state must be :func:`state_current`. Recomputed
    are those of them whose identifier values changed (a value gained or lost: a customer's state depends on
    its values, the events naming them and those values' other carriers), every customer an event naming such
    a value reaches (through any value the event names), and every customer reached by a ledger event
    appended since or dated between the last ``as_of`` and this one. Another carrier of a changed value that
    no event names is left alone: a value's carriers only count through the events naming it. The result
    equals a full rebuild's (``computed_at`` aside: untouched rows keep theirs). ``records``: a temp table
    holding those customers' staged records (:func:`identity.changes.records_of_run`), else they are read
    here. ``before_commit`` runs inside the transaction, just before it commits.

    Returns counts only, no personal data. ``granted`` / ``withdrawn``: state rows by status; ``events``:
    ledger size. A full rebuild adds ``unmatched_events`` (events in force that reach no known customer yet,
    kept and applied once their identifiers appear), ``events_dated_ahead`` (grants dated after ``as_of``,
    which apply from their date) and ``ambiguous_grants`` (grants that reach customers only
    ambiguously and so grant nothing); an update adds ``customers_recomputed`` instead.
    """
    ensure_ledger(con)
    ensure_state(con)
    if customers is not None:
        for name in (customers, records or customers):
            if not _TABLE_NAME.fullmatch(name):
                raise ValueError(f"not a table name: {name!r}")
        if not state_current(con):
            raise ValueError("consent_state has no basis for an update; rebuild it in full")
    as_of = as_of or datetime.now(UTC).replace(tzinfo=None)  # the store's times are UTC, whatever the machine's zone
    params = {"as_of": as_of}
    loose = table_exists(con, "raw_consent")
    counts: dict[str, int] = {}
    try:
        with transaction(con):
            for ddl in BASIS_DDL:
                ensure_table(con, ddl)
            if customers is None:
                counts = _rebuild(con, params, loose)
            else:
                counts = _update(con, params, loose, customers, records)
            if customers is None or counts["customers"]:  # rows were written: its checks look again
                unverify(con, "consent_state")
            con.execute("DELETE FROM consent_state_basis")
            if counts.get("linked", 1):  # with no customers yet, no basis either: the next computation is full
                con.execute("INSERT INTO consent_state_basis VALUES ($as_of, $loose, $version)",
                            {**params, "loose": loose, "version": BASIS_VERSION})  # fmt: skip
            if before_commit is not None:
                before_commit(con)
    finally:
        con.execute("; ".join(f"DROP TABLE IF EXISTS {temp}" for temp in _TEMPS))  # one call: 3.6 ms, not 5.5
    by_status = dict(con.execute("SELECT status, count(*) FROM consent_state GROUP BY status").fetchall())
    events = int(con.execute("SELECT count(*) FROM consent_events").fetchall()[0][0])
    result = {"granted": int(by_status.get("granted", 0)), "withdrawn": int(by_status.get("withdrawn", 0))}
    result["events"] = events
    if "reached" in counts:
        ahead = con.execute(f"SELECT count(*) FROM consent_events WHERE {in_force()} > $as_of", params).fetchall()
        result["events_dated_ahead"] = int(ahead[0][0])
        result["unmatched_events"] = events - counts["reached"] - result["events_dated_ahead"]
        result["ambiguous_grants"] = counts["ambiguous"]
    else:
        result["customers_recomputed"] = counts["customers"]
    return result


def events_due(con: duckdb.DuckDBPyConnection, now: datetime | None = None) -> int:
    """How many ledger events came into force (by ``now``) since ``consent_state`` was computed, or are not in
    it yet; 0 when the state cannot be brought up to date here (:func:`state_current`). Reads only."""
    if not state_current(con):
        return 0
    return int(
        con.execute(
            f"""SELECT count(*) FROM consent_events
               WHERE {in_force()} <= $now AND ({in_force()} > (SELECT as_of FROM consent_state_basis)
                                             OR {_UNSEEN})""",
            {"now": now or datetime.now(UTC).replace(tzinfo=None)},
        ).fetchall()[0][0]
    )


def pending_note(pending: int) -> str:
    """What counts taken on a :func:`connect_as_of_now` connection leave out, said the same in the CLI and the
    console; ``pending`` is :func:`events_due` on that connection."""
    return (
        f"{pending} consent events came into force since the last run and are not in these counts "
        "(the store is in use); an export applies them"
    )


def connect_as_of_now(db_path: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the store whose consent state is as of now: ledger events that came into
    force since it was computed (a grant dated a few minutes ahead, now due) are applied first, in a short
    write, as an export applies them. Counts shown before an export (segment list and preview) are then the
    export's. Without such events nothing is written. When the store cannot be written now (another process
    has it open, a file this user may only read), the connection reads it as it is: :func:`events_due` on it
    then says how many events the counts leave out."""
    from cdp.errors import CdpError
    from cdp.store import connect

    con = connect(db_path, read_only=True)
    try:
        if not events_due(con):
            return con
    except BaseException:
        con.close()
        raise
    con.close()
    try:
        writer = connect(db_path, create=False)
    except CdpError:  # busy or read-only: counts as of the last run, and the caller can say so
        return connect(db_path, read_only=True)
    try:
        bring_to_now(writer)
    finally:
        writer.close()
    return connect(db_path, read_only=True)


def bring_to_now(con: duckdb.DuckDBPyConnection) -> int:
    """Update ``consent_state`` for the ledger events that came into force since it was computed (a withdrawal
    dated a minute after the last run, or appended by a run that stopped before its consent step), so that
    an export decides on consent as of the moment it asks. Customers whose records identity changed are left
    to the pipeline's ``consent_state`` step (their changes stay pending for it). Returns the customers
    recomputed; 0, and nothing written, when no event came into force."""
    now = datetime.now(UTC).replace(tzinfo=None)
    if not events_due(con, now):
        return 0
    con.execute("CREATE OR REPLACE TEMP TABLE _cs_nobody (customer_id VARCHAR)")
    try:
        return build_consent_state(con, as_of=now, customers="_cs_nobody")["customers_recomputed"]
    finally:
        con.execute("DROP TABLE IF EXISTS _cs_nobody")


#: Temp tables of this module, dropped after every computation.
_TEMPS = (
    "_consent_ids", "_consent_hits", "_cs_changed", "_cs_changed_ids", "_cs_held", "_cs_gained", "_cs_lost",
    "_cs_moved", "_cs_buckets", "_cs_new",
    "_cs_seeds", "_cs_affected", "_cs_affected_ids", "_cs_changed_records",
    "_cs_events", "_cs_ledger", "_cs_values", "_cs_reach", "_cs_loose", "_cs_state",
)  # fmt: skip


def _store_values(con: duckdb.DuckDBPyConnection, ids: str) -> None:
    """Append to ``consent_state_keys`` the values of ``ids`` (a temp table of :func:`_ids_sql`'s rows), with
    their buckets: what a full computation stores for everyone (an update writes its differences only)."""
    con.execute(
        f"""INSERT INTO consent_state_keys
            SELECT customer_id, kind, value, {_BUCKET} FROM {ids} WHERE value IS NOT NULL"""
    )


def _see(con: duckdb.DuckDBPyConnection, events: str) -> None:
    """Record the ledger events of table ``events`` (``event_id``, ``origin``, ``batch_id``) as seen: their
    batches, and the ids of those without one."""
    con.execute(
        f"""INSERT INTO consent_state_seen_batches
            SELECT DISTINCT origin, batch_id FROM {events} WHERE batch_id IS NOT NULL"""
    )
    con.execute(f"INSERT INTO consent_state_seen SELECT event_id FROM {events} WHERE batch_id IS NULL")


def _rebuild(con: duckdb.DuckDBPyConnection, params: dict[str, datetime], loose: bool) -> dict[str, int]:
    """Every customer's state from the whole ledger; the basis tables anew. In the caller's transaction."""
    for table in ("consent_state", "consent_state_seen_batches", "consent_state_seen", "consent_state_keys"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    for ddl in (STATE_DDL, *BASIS_DDL):
        con.execute(ddl)
    _see(con, "consent_events")
    if not (table_exists(con, "stg_records") and table_exists(con, "customer_source_records")):
        return {"reached": 0, "ambiguous": 0, "linked": 0}
    con.execute(f"CREATE OR REPLACE TEMP TABLE _consent_ids AS {_ids_sql(loose)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _consent_hits AS {hits_sql(loose)}", params)
    con.execute(f"INSERT INTO consent_state {_STATE_SQL.format(only='', ledger='consent_events')}", params)
    _store_values(con, "_consent_ids")
    reached, ambiguous = con.execute(
        """SELECT count(DISTINCT h.event_id),
                  count(DISTINCT h.event_id) FILTER (WHERE ev.status = 'granted' AND h.n <> 1)
           FROM _consent_hits h JOIN consent_events ev USING (event_id)"""
    ).fetchall()[0]
    return {"reached": int(reached), "ambiguous": int(ambiguous)}


def _update(
    con: duckdb.DuckDBPyConnection, params: dict[str, datetime], loose: bool, customers: str, records: str | None
) -> dict[str, int]:
    """The state of the customers it may have changed for (see :func:`build_consent_state`). In the caller's
    transaction. First who is affected, through buckets (a superset), then their state, through values."""
    window = {**params, "prev": con.execute("SELECT as_of FROM consent_state_basis").fetchall()[0][0]}
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _cs_changed AS
            SELECT DISTINCT customer_id FROM {customers} WHERE customer_id IS NOT NULL"""
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _cs_new AS SELECT event_id, origin, batch_id FROM consent_events WHERE {_UNSEEN}"
    )
    # No changed customer, no new event, none come into (or out of) force since the last as_of: nothing to do.
    quiet = f"""SELECT NOT EXISTS (FROM _cs_changed) AND NOT EXISTS (FROM _cs_new) AND NOT EXISTS (
                   FROM consent_events
                   WHERE {in_force()} > least($prev, $as_of) AND {in_force()} <= greatest($prev, $as_of))"""
    if con.execute(quiet, window).fetchall()[0][0]:
        return {"customers": 0}
    records = records or changed_records(con, "_cs_changed", "_cs_changed_records")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _cs_changed_ids AS {_ids_sql(loose, records)}")
    # The values a changed customer gained or lost since the last computation. A customer's state depends on
    # its values only (and on the events naming them and those values' other carriers): most changed customers
    # gained a record carrying values they had already (an event of a known cookie), and their state is what it
    # was unless an event reaches them below. (A customer id that appeared or went gained or lost every value.)
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _cs_held AS
           SELECT * FROM consent_state_keys WHERE customer_id IN (SELECT customer_id FROM _cs_changed)"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _cs_gained AS
            SELECT customer_id, kind, value, {_BUCKET} AS bucket FROM (
                SELECT c.* FROM _cs_changed_ids c ANTI JOIN _cs_held h USING (customer_id, kind, value)
                WHERE c.value IS NOT NULL)"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _cs_lost AS
           SELECT h.* FROM _cs_held h ANTI JOIN _cs_changed_ids c USING (customer_id, kind, value)"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _cs_moved AS
           SELECT customer_id FROM _cs_gained UNION SELECT customer_id FROM _cs_lost"""
    )
    # The buckets of those values: only their carriers changed, so only the events naming them can reach anyone
    # differently (a CRM contact's new phone leaves the old number's other carriers with a new fan-out).
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _cs_buckets AS SELECT bucket FROM _cs_gained UNION SELECT bucket FROM _cs_lost"
    )
    # From here on consent_state_keys holds every customer's values as they are now: the changed customers' are
    # read again above (only the difference is written), everyone else's records are as they were (or they
    # would be changed customers).
    con.execute(
        """DELETE FROM consent_state_keys
           WHERE customer_id IN (SELECT customer_id FROM _cs_lost)
             AND (customer_id, kind, value) IN (SELECT (customer_id, kind, value) FROM _cs_lost)"""
    )
    con.execute("INSERT INTO consent_state_keys SELECT * FROM _cs_gained")
    # Events whose reach may differ from last time: naming a changed value, new, or come into (or out of)
    # force between the two as_of; then the buckets of every value they name, loose emails included. The
    # changed values themselves are not reached as such: who else carries a value matters to no one's state
    # unless an event names it (a grant's fan-out and ``n`` count the carriers of the values it names), and
    # such an event is a seed.
    until = "greatest($prev, $as_of)"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _cs_seeds AS
            SELECT event_id FROM consent_events WHERE {in_force()} <= {until} AND ({_naming_bucket("_cs_buckets")})
            UNION SELECT event_id FROM _cs_new
            UNION SELECT event_id FROM consent_events
                  WHERE {in_force()} > least($prev, $as_of) AND {in_force()} <= greatest($prev, $as_of)""",
        window,
    )
    # (Loose candidates are read once into a temp table: inside a larger query DuckDB computed the loose key of
    # every withdrawal before keeping the few it needed, eight times slower.)
    if loose:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _cs_loose AS {_loose_candidates(until)}", window)
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE _cs_loose (event_id VARCHAR, in_force TIMESTAMP, value VARCHAR)")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _cs_reach AS
            SELECT {_BUCKET} AS bucket FROM (
                {_event_ids_sql("_cs_seeds", until)}
                UNION ALL
                SELECT event_id, 'email_loose' AS kind, value FROM _cs_loose SEMI JOIN _cs_seeds USING (event_id))
            WHERE value IS NOT NULL""",
        window,
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _cs_affected AS
           SELECT customer_id FROM _cs_moved
           UNION SELECT customer_id FROM consent_state_keys SEMI JOIN _cs_reach USING (bucket)"""
    )
    # Their state, exactly: the events reaching them, and every carrier of the values those events name.
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _cs_affected_ids AS
           SELECT customer_id, kind, value FROM consent_state_keys
           WHERE customer_id IN (SELECT customer_id FROM _cs_affected)"""
    )
    # The applicable events naming their values, with their ledger rows, read once: the values they name,
    # their hits and the state come from these. Only the columns those read: the rows lie all over the ledger,
    # and fetching the email, consent id, file and batch of each too took 9 ms more (42 against 33 ms).
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _cs_ledger AS
            SELECT event_id, origin, event_time, purpose, status, source, policy_version, recorded_at, {_IDS}
            FROM consent_events
            WHERE {in_force()} <= $as_of
              AND ({_naming_value("_cs_affected_ids")}
                   OR event_id IN (SELECT event_id FROM _cs_loose
                                   WHERE value IN (SELECT value FROM _cs_affected_ids WHERE kind = 'email_loose')))""",
        params,
    )
    con.execute("CREATE OR REPLACE TEMP TABLE _cs_events AS SELECT event_id FROM _cs_ledger")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _cs_values AS
            SELECT DISTINCT kind, value FROM ({_event_ids_sql(ledger="_cs_ledger")})""",
        params,
    )
    carriers = "SELECT customer_id, kind, value FROM consent_state_keys SEMI JOIN _cs_values USING (kind, value)"
    if loose:
        carriers += " UNION ALL SELECT * FROM _cs_affected_ids WHERE kind = 'email_loose'"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _consent_ids AS {carriers}")
    hits = hits_sql(loose, events="_cs_events", ledger="_cs_ledger", loose="_cs_loose")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _consent_hits AS {hits}", params)
    only = "AND h.customer_id IN (SELECT customer_id FROM _cs_affected)"
    state = _STATE_SQL.format(only=only, ledger="_cs_ledger")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _cs_state AS {state}", params)
    # Only rows whose state changed or ended are deleted and written again: the rest stay where they are (when
    # the table had a primary key, rewriting twenty thousand of its index entries took longer than computing
    # them; rows rewritten are rows the commit and the checkpoint write) and only take the new computed_at.
    same = " AND ".join(f"n.{column} IS NOT DISTINCT FROM s.{column}" for column in _STATE_VALUES)
    con.execute(
        f"""DELETE FROM consent_state s
            WHERE customer_id IN (SELECT customer_id FROM _cs_affected)
              AND NOT EXISTS (SELECT 1 FROM _cs_state n
                              WHERE n.customer_id = s.customer_id AND n.purpose = s.purpose AND {same})"""
    )
    con.execute(
        "UPDATE consent_state SET computed_at = $as_of WHERE customer_id IN (SELECT customer_id FROM _cs_affected)",
        params,
    )
    con.execute(
        """INSERT INTO consent_state
           SELECT * FROM _cs_state n
           WHERE NOT EXISTS (SELECT 1 FROM consent_state s
                             WHERE s.customer_id = n.customer_id AND s.purpose = n.purpose)"""
    )
    _see(con, "_cs_new")
    return {"customers": int(con.execute("SELECT count(*) FROM _cs_affected").fetchall()[0][0])}
