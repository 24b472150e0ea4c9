"""The identifier graph: identity units joined by the keys they share, with hub identifiers held back.

An *identity unit* is what a person leaves behind as one thing: a CRM contact, a store transaction, a
web cookie (all its events) or an app device (all its events); ``stg_records.unit_id`` names it. Units
are joined when they share a usable key: ``user_id``, ``loyalty_id``, the email match key, the E.164
phone, ``crm_id``, or a cookie/device id. A cookie or device carries the keys of its identified events.

Guards, in order:

1. Placeholder values (``null``, ``-1``, ``0000``, ``test@...``, ``123456``...) are never keys.
2. A cookie or device that saw several values of one key type (a shared tablet, two accounts) keeps
   only a value that most of its identified events carry; with no majority it keeps none.
3. A key held by more units than ``settings.max_records_per_identifier[type]`` is a hub: no links.
4. A key shared by units that disagree on who they are (clearly different first names, dates of birth
   more than a typo apart, or two accounts/cards in use: a household landline, a family email) is not
   a hard link. It only joins units that also share the (nickname-folded) first name and do not
   disagree otherwise (see ``DISAGREE_MACRO``, which the model's pairs and the clusters obey too). So is
   a card, phone or email held by nameless units (receipts) that each carry a different email or phone of
   their own: a staff card on customers' sales, the shop's phone on receipts emailed to customers.

Every edge records its evidence: the key *type* and the rule, never the key's value, so that erasing a
record's unit removes its edges. Edges are written as a star per key (every unit to the key's smallest
unit id), which keeps their number linear in the number of units.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from importlib import resources

import duckdb
import pandas as pd

from cdp.store import sql_strings, table_exists

#: Key types that can join units, in the order edges are reported.
KEY_TYPES = ("user_id", "loyalty_id", "email_key", "phone_e164", "crm_id", "device_id", "anonymous_id")

#: The ``stg_records`` columns :func:`build_units` and :func:`build_unit_keys` read: a table of some records
#: given to them (``records``) needs these only.
RECORD_COLUMNS = tuple(
    dict.fromkeys(
        ("unit_id", "source", "first_name", "last_name", "date_of_birth", "postcode", "address_line1", "city")
        + KEY_TYPES
    )
)

#: Key types that name a unit themselves: on the unit's own records they cannot join it to another unit,
#: so only their appearances on other units' records are read (none, in the contract's sources today).
UNIT_PREFIX = {"crm_id": "crm:", "anonymous_id": "web:", "device_id": "app:"}

#: Values of any key type that stand for "no value".
PLACEHOLDER_VALUES = (
    "null", "none", "nil", "nan", "n/a", "na", "unknown", "undefined", "unset", "-1", "0", "test", "testing",
    "anonymous", "anon", "guest", "default", "tbd", "tba", "xxx", "?", "-", "123", "1234", "12345",
    "123456", "1234567", "12345678", "123456789", "1234567890", "not provided", "not_provided", "noemail",
)  # fmt: skip
#: Email local parts that are not a person's mailbox, as written (the match key's local part): what a till or
#: CRM operator types when a customer gives no email, system and test addresses, keyboard filler. Not a name
#: or initials a person may own as a mailbox (``nil``, ``anon``, ``noone``, ``n.a``, ``a.b.c``).
PLACEHOLDER_EMAIL_LOCALS = (
    "test", "noreply", "no-reply", "donotreply", "do-not-reply", "none", "null", "nobody", "noemail",
    "no-email", "example", "email", "unknown", "na", "n/a", "x", "xx", "xxx", "abc", "asdf", "qwerty",
    "fake", "dummy", "sample", "user", "nomail", "nope", "declined", "refused", "withheld", "noname",
    "anonymous", "guest",
)  # fmt: skip
#: Phrases of several words meaning "no email", matched folded (:data:`FOLDED_EMAIL_LOCAL`: without dots,
#: underscores and hyphens), so that ``no.email``, ``no_email`` and ``no-email`` are one entry. Only phrases
#: no initials or name fold into: folding ``n.a`` or ``t.est`` would make a person's mailbox a placeholder,
#: never linked, swept or suppressed.
PLACEHOLDER_EMAIL_PHRASES = (
    "noemail", "nomail", "noemailaddress", "nomailaddress", "noaddress", "noemailgiven", "noemailprovided",
    "emailnotgiven", "emailnotprovided", "notgiven", "notprovided", "nonegiven", "noneprovided",
    "notapplicable", "notavailable", "notknown", "nothanks", "optout", "optedout", "noreply", "donotreply",
)  # fmt: skip
PLACEHOLDER_EMAIL_DOMAINS = (
    "example.com", "example.org", "example.net", "test.com", "test.test", "invalid.com", "none.com",
    "noemail.com", "no-email.com", "nomail.com", "email.invalid", "localhost.com", "fake.com",
    "mailinator.com",
)  # fmt: skip


#: SQL: the local part of the email match key ``v`` folded for :data:`PLACEHOLDER_EMAIL_PHRASES`: its dots,
#: underscores and hyphens dropped (the match key is lower-case already).
FOLDED_EMAIL_LOCAL = "translate(split_part(v, '@', 1), '._-', '')"

PLACEHOLDER_MACRO = f"""
CREATE OR REPLACE TEMP MACRO cdp_is_placeholder(t, v) AS (
    v IS NULL OR trim(v) = ''
    OR lower(trim(v)) IN ({sql_strings(PLACEHOLDER_VALUES)})
    OR length(replace(lower(trim(v)), left(lower(trim(v)), 1), '')) = 0
    OR regexp_full_match(trim(v), '[0\\-\\s.+]+')
    OR (t = 'email_key' AND (
        split_part(v, '@', 1) IN ({sql_strings(PLACEHOLDER_EMAIL_LOCALS)})
        OR regexp_full_match(split_part(v, '@', 1), '(test|dummy|fake)[0-9._-]*')
        OR {FOLDED_EMAIL_LOCAL} IN ({sql_strings(PLACEHOLDER_EMAIL_PHRASES)})
        OR regexp_full_match({FOLDED_EMAIL_LOCAL}, '(noreply|donotreply|noemail|nomail)[0-9]*')
        OR split_part(v, '@', 2) IN ({sql_strings(PLACEHOLDER_EMAIL_DOMAINS)})
        OR length(replace(split_part(v, '@', 1), left(split_part(v, '@', 1), 1), '')) = 0))
    OR (t = 'phone_e164' AND regexp_matches(v, '0{{6,}}$'))
)
"""

#: Dates of birth "near" each other: one keying error apart, a day apart (19 -> 20 is two digits), day
#: and month swapped (with at most one keying error more), or the year one off with at most one keying
#: error (or a swap) in month and day -- each of two copies may carry an error.
NEAR_DOB_MACRO = """
CREATE OR REPLACE TEMP MACRO cdp_near_dob(a, b) AS (
    a = b
    OR damerau_levenshtein(strftime(a, '%Y%m%d'), strftime(b, '%Y%m%d')) <= 1
    OR abs(date_diff('day', a, b)) <= 1
    OR damerau_levenshtein(strftime(a, '%Y%d%m'), strftime(b, '%Y%m%d')) <= 1
    OR (abs(year(a) - year(b)) <= 1 AND (
        damerau_levenshtein(strftime(a, '%m%d'), strftime(b, '%m%d')) <= 1
        OR (month(a) = day(b) AND day(a) = month(b))))
)
"""

#: First names "agree" when they are one name: they share a candidate canonical form (nickname folding
#: that tolerates one keying error: "katthy" -> kathy -> katherine, "phl" -> phil -> philip), are one
#: keying error apart (two for names of five letters or more with the same initial), one is a prefix of
#: the other, or forename and surname are swapped (each within a typo or one keying error). Anything
#: else -- Patrick and Patricia, John and Mary -- is "clearly different". ``ca``/``cb`` (forenames) and
#: ``la``/``lb`` (surnames): candidate canonical lists from :func:`build_units`, so a swap may hide a
#: nickname too.
NAMES_DISAGREE_MACRO = """
CREATE OR REPLACE TEMP MACRO cdp_names_disagree(fn_a, ca, ln_a, la, fn_b, cb, ln_b, lb) AS (
    coalesce(NOT (
        list_has_any(ca, cb)
        OR damerau_levenshtein(fn_a, fn_b) <= 1
        OR (least(length(fn_a), length(fn_b)) >= 5 AND left(fn_a, 1) = left(fn_b, 1)
            AND damerau_levenshtein(fn_a, fn_b) <= 2)
        OR (least(length(fn_a), length(fn_b)) >= 3 AND (starts_with(fn_a, fn_b) OR starts_with(fn_b, fn_a)))
        -- an initial ("J Taylor" on a card receipt) is the start of the name, not another name
        OR (least(length(fn_a), length(fn_b)) = 1 AND left(fn_a, 1) = left(fn_b, 1))
        OR ((jaro_winkler_similarity(fn_a, ln_b) >= 0.88 OR damerau_levenshtein(fn_a, ln_b) <= 1
             OR list_has_any(ca, lb))
            AND (jaro_winkler_similarity(ln_a, fn_b) >= 0.88 OR damerau_levenshtein(ln_a, fn_b) <= 1
                 OR list_has_any(la, cb)))
    ), false)
)
"""

#: Two units that "disagree on who they are": clearly different first names, dates of birth more than a
#: typo apart, or -- unless their dates of birth agree (a duplicate account of one person) -- different
#: values of a key a person normally has one of (the online account ``user_id``, the ``loyalty_id``).
#: Arguments are two structs of :data:`WHO_COLUMNS`; missing values never disagree.
DISAGREE_MACRO = """
CREATE OR REPLACE TEMP MACRO cdp_disagree(a, b) AS (
    cdp_names_disagree(a.first_name, a.first_cands, a.last_name, a.last_cands,
                       b.first_name, b.first_cands, b.last_name, b.last_cands)
    OR coalesce(NOT cdp_near_dob(a.dob, b.dob), false)
    OR coalesce((a.user_id <> b.user_id OR a.loyalty_id <> b.loyalty_id)
                AND NOT coalesce(cdp_near_dob(a.dob, b.dob), false), false)
)
"""
WHO_COLUMNS = ("first_name", "first_cands", "last_name", "last_cands", "dob", "user_id", "loyalty_id")

#: Two person records whose contact details contradict: each has its own mailbox and its own phone (neither
#: shared, neither a placeholder), and no pair of dates of birth ties them, or the dates tie them but the
#: first names are not one spelling (nor one nickname's). One name at one address with two sets of contact
#: details is as likely two people of that name (mother and daughter, father and son) as one person who
#: changed both, so name and address alone do not join them; and twins are born the same day: Paul and
#: Paula, or Francis and Frances, each with a mailbox and a phone of their own, are two people. Only the
#: model's guards use it (:mod:`identity.model`): a shared key is evidence of its own, judged by ``cdp_disagree``.
CONTACTS_DISAGREE_MACRO = """
CREATE OR REPLACE TEMP MACRO cdp_contacts_disagree(a, b) AS (
    coalesce(a.email_key <> b.email_key AND a.phone_e164 <> b.phone_e164
             AND NOT cdp_is_placeholder('email_key', a.email_key)
             AND NOT cdp_is_placeholder('email_key', b.email_key)
             AND NOT cdp_is_placeholder('phone_e164', a.phone_e164)
             AND NOT cdp_is_placeholder('phone_e164', b.phone_e164)
             AND (NOT coalesce(cdp_near_dob(a.dob, b.dob), false)
                  OR NOT coalesce(a.first_name = b.first_name OR list_has_any(a.first_cands, b.first_cands), true)),
             false)
)
"""
#: The columns :data:`CONTACTS_DISAGREE_MACRO` reads (:func:`contacts`).
CONTACT_COLUMNS = ("email_key", "phone_e164", "dob", "first_name", "first_cands")


def contacts(alias: str) -> str:
    """SQL struct of the contact columns of ``alias``, for ``cdp_contacts_disagree``."""
    return who(alias, CONTACT_COLUMNS)


def who(alias: str, columns: tuple[str, ...] = WHO_COLUMNS) -> str:
    """SQL struct of the identity-bearing columns of ``alias`` (a table alias of this package's SQL)."""
    return "{" + ", ".join(f"'{c}': {alias}.{c}" for c in columns) + "}"


#: Street-type abbreviations folded to one spelling before addresses are compared.
STREET_WORDS = {
    "rd": "road", "st": "street", "ln": "lane", "ave": "avenue", "av": "avenue", "cl": "close", "dr": "drive",
    "gr": "grove", "gro": "grove", "cres": "crescent", "cresc": "crescent", "gdns": "gardens", "pl": "place",
    "ct": "court", "sq": "square", "ter": "terrace", "terr": "terrace", "pk": "park", "hse": "house",
}  # fmt: skip


def _address_macro() -> str:
    expr = "' ' || regexp_replace(lower(coalesce(a, '')), '[^a-z0-9]+', ' ', 'g') || ' '"
    for short, full in STREET_WORDS.items():
        expr = f"replace({expr}, ' {short} ', ' {full} ')"
    return f"CREATE OR REPLACE TEMP MACRO cdp_address(a) AS (NULLIF(trim({expr}), ''))"


def install_macros(con: duckdb.DuckDBPyConnection) -> None:
    """The SQL helpers the graph and the model share (temporary, per connection). Once a connection: one that
    has ``cdp_macros_installed()``, declared after the others, has them all (a rolled-back transaction takes
    all of them away). Asked by binding a call to it, which fails without aborting the caller's transaction:
    0.1 ms against 7 ms for declaring them, three times a batch run."""
    try:
        con.sql("SELECT cdp_macros_installed()")
        return
    except duckdb.CatalogException:
        pass
    con.execute(PLACEHOLDER_MACRO)
    con.execute(NEAR_DOB_MACRO)
    con.execute(_address_macro())
    con.execute(NAMES_DISAGREE_MACRO)
    con.execute(DISAGREE_MACRO)
    con.execute(CONTACTS_DISAGREE_MACRO)
    con.execute("CREATE OR REPLACE TEMP MACRO cdp_macros_installed() AS true")


def is_placeholder(key_type: str, value: str | None) -> bool:
    """Whether ``value`` is a stand-in rather than a key (same rule as the SQL the graph runs).

    >>> is_placeholder("email_key", "test@example.com"), is_placeholder("user_id", "u-81723")
    (True, False)
    >>> is_placeholder("email_key", "no.email@mailbox.co.uk"), is_placeholder("email_key", "noel.ward@mailbox.co.uk")
    (True, False)
    """
    con = duckdb.connect()
    try:
        install_macros(con)
        return bool(con.execute("SELECT cdp_is_placeholder(?, ?)", [key_type, value]).fetchall()[0][0])
    finally:
        con.close()


#: The nickname table (name, canonical). A data team may extend it; identity's fingerprint covers it
#: (:func:`identity.resolve._model_sha`), so the next run after an edit re-resolves every customer.
NICKNAMES_FILE = resources.files("identity").joinpath("data/nicknames.csv")


def load_nicknames(con: duckdb.DuckDBPyConnection) -> int:
    """Load :data:`NICKNAMES_FILE` (name, canonical) into temp table ``_nicknames``.

    Every (name, canonical) pair is kept (``chris`` is short for christopher and for christine), and
    canonical names map to themselves. Without the file every name is its own canonical form. Returns
    the number of pairs.
    """
    pairs: set[tuple[str, str]] = set()
    path = NICKNAMES_FILE
    if path.is_file():
        with path.open(encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                name = (row.get("name") or "").strip().lower()
                canonical = (row.get("canonical") or "").strip().lower()
                if name and canonical:
                    pairs.update({(name, canonical), (canonical, canonical)})
    ordered = sorted(pairs)
    frame = pd.DataFrame({"name": [p[0] for p in ordered], "canonical": [p[1] for p in ordered]}, dtype="string")
    con.execute("CREATE OR REPLACE TEMP TABLE _nicknames (name VARCHAR, canonical VARCHAR)")
    if len(frame):
        con.register("_nicknames_frame", frame)
        con.execute("INSERT INTO _nicknames SELECT name, canonical FROM _nicknames_frame")
        con.unregister("_nicknames_frame")
    return len(frame)


def build_units(con: duckdb.DuckDBPyConnection, records: str = "stg_records", with_keys: bool = True) -> int:
    """Temp table ``_units``: one row per identity unit with its person attributes.

    ``records`` names the staged-records table (``stg_records``, or a subset this package made). Without
    ``with_keys`` the ``user_id``/``loyalty_id`` columns are left empty for :func:`build_graph` to fill
    with each unit's majority key (cheaper: most events carry an account id and nothing else).

    Person attributes come from the unit's records (a CRM contact or a store transaction has one
    record; a cookie or device rarely carries any): the smallest non-null value, so reruns agree.
    """
    install_macros(con)
    if not table_exists(con, "_nicknames", temporary=True):
        load_nicknames(con)
    keys_columns = (
        "min(user_id) AS user_id, min(loyalty_id) AS loyalty_id"
        if with_keys
        else ("NULL::VARCHAR AS user_id, NULL::VARCHAR AS loyalty_id")
    )
    keys_filter = "OR user_id IS NOT NULL OR loyalty_id IS NOT NULL" if with_keys else ""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _units AS
        WITH a AS (SELECT unit_id, min(source) AS source, count(*) AS n_records FROM {records} GROUP BY unit_id),
        p AS (
            -- person attributes: only rows that carry one (most events carry none)
            SELECT unit_id, min(first_name) AS first_name, min(last_name) AS last_name,
                   min(date_of_birth) AS dob, min(email_key) AS email_key,
                   min(phone_e164) AS phone_e164, min(postcode) AS postcode,
                   cdp_address(min(address_line1)) AS address_line1, min(city) AS city,
                   {keys_columns}
            FROM {records}
            WHERE first_name IS NOT NULL OR last_name IS NOT NULL OR date_of_birth IS NOT NULL
               OR email_key IS NOT NULL OR phone_e164 IS NOT NULL OR postcode IS NOT NULL
               OR address_line1 IS NOT NULL {keys_filter}
            GROUP BY unit_id
        ),
        u AS (
            SELECT a.*, p.* EXCLUDE (unit_id, user_id, loyalty_id),
                   CASE WHEN NOT cdp_is_placeholder('user_id', p.user_id) THEN p.user_id END AS user_id,
                   CASE WHEN NOT cdp_is_placeholder('loyalty_id', p.loyalty_id) THEN p.loyalty_id END AS loyalty_id
            FROM a LEFT JOIN p USING (unit_id)
        )
        SELECT u.*, coalesce(n.canonical, split_part(u.first_name, ' ', 1)) AS first_canon
        FROM u LEFT JOIN (SELECT name, min(canonical) AS canonical FROM _nicknames GROUP BY name) n
          ON n.name = split_part(u.first_name, ' ', 1)
        """
    )
    # Candidate canonical forms of each distinct first name: its own first word and the canonical form of
    # every nickname-list name that is that word or one keying error from it past the first letter, for
    # list names of three letters or more ("katthy" -> kathy -> katherine, "jak" -> jack -> john; but
    # "mandy" is not "andy" and "ali" is not "al" mistyped). A word that is itself on the list is a name in
    # its own right: it folds by a keying error only onto a full (canonical) name ("jon" -> john), never
    # onto another short form ("john" is not a mistyped "jon" -> jonathan, "nick" not "nicky" -> nicola:
    # a household's John and Jonathan, Nicola and Nick, were joined by that). Decided per name, so every
    # run gives a name the same forms.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _name_candidates AS
        WITH names AS (SELECT DISTINCT name, split_part(name, ' ', 1) AS word FROM (
                           SELECT first_name AS name FROM _units UNION SELECT last_name FROM _units)
                       WHERE name IS NOT NULL),
        listed AS (SELECT DISTINCT name FROM _nicknames),
        hits AS (SELECT n.name, k.canonical FROM names n JOIN _nicknames k
                 ON k.name = n.word
                    OR (length(k.name) >= 3 AND left(k.name, 1) = left(n.word, 1)
                        AND abs(length(k.name) - length(n.word)) <= 1 AND damerau_levenshtein(k.name, n.word) <= 1
                        AND (k.name = k.canonical OR n.word NOT IN (SELECT name FROM listed))))
        SELECT name, list_distinct(list(canonical) || [any_value(word)]) AS cands
        FROM (SELECT n.name, h.canonical, n.word FROM names n LEFT JOIN hits h USING (name))
        GROUP BY name
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _units AS
        SELECT u.*, f.cands AS first_cands, l.cands AS last_cands FROM _units u
        LEFT JOIN _name_candidates f ON f.name = u.first_name
        LEFT JOIN _name_candidates l ON l.name = u.last_name
        """
    )
    return int(con.execute("SELECT count(*) FROM _units").fetchall()[0][0])


def _limits_frame(limits: Mapping[str, int]) -> pd.DataFrame:
    return pd.DataFrame({"id_type": list(KEY_TYPES), "max_units": [int(limits.get(t, 10**12)) for t in KEY_TYPES]})


def build_graph(con: duckdb.DuckDBPyConnection, limits: Mapping[str, int]) -> dict[str, int]:
    """Build temp tables ``_units``, ``_unit_keys``, ``_key_groups`` and ``_graph_edges`` from ``stg_records``.

    ``_graph_edges(unit_id_l, unit_id_r, evidence, rule)`` with ``unit_id_l < unit_id_r``; ``evidence``
    is the key type. Returns counts (no values) for run metadata.
    """
    install_macros(con)
    build_units(con, with_keys=False)
    build_unit_keys(con)
    apply_used_keys(con)
    link_keys(con, limits)
    return graph_stats(con)


def build_unit_keys(con: duckdb.DuckDBPyConnection, records: str = "stg_records") -> None:
    """Temp tables ``_raw_keys`` and ``_unit_keys(unit_id, id_type, id_value, shared_unit)`` of the units of
    ``records`` (guards 1 and 2: no placeholders, a unit's strict-majority value per type)."""
    keys_sql = " UNION ALL ".join(
        f"SELECT unit_id, '{t}' AS id_type, {t} AS id_value FROM {records} WHERE {t} IS NOT NULL"
        + (f" AND unit_id <> '{UNIT_PREFIX[t]}' || {t}" if t in UNIT_PREFIX else "")
        for t in KEY_TYPES
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _raw_keys AS
        WITH k AS (SELECT unit_id, id_type, id_value, count(*) AS n FROM ({keys_sql}) GROUP BY ALL),
        v AS (SELECT id_type, id_value, cdp_is_placeholder(id_type, id_value) AS placeholder
              FROM (SELECT DISTINCT id_type, id_value FROM k))
        SELECT k.*, v.placeholder FROM k JOIN v USING (id_type, id_value)
        """
    )
    # Guard 2: a unit with several values of one type keeps only a strict-majority value.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _unit_keys AS
        WITH k AS (
            SELECT *, sum(n) OVER (PARTITION BY unit_id, id_type) AS total,
                   count(*) OVER (PARTITION BY unit_id, id_type) AS n_values
            FROM _raw_keys WHERE NOT placeholder
        )
        SELECT unit_id, id_type, id_value, n_values > 1 AS shared_unit
        FROM k WHERE 2 * n > total
        """
    )


def apply_used_keys(con: duckdb.DuckDBPyConnection, all_keys: str = "_unit_keys") -> None:
    """Fill ``_units.user_id``/``loyalty_id`` with the unit's majority account and card, when in use.

    A unit's one-per-person keys, as evidence of who it is, are the ones it links by (its majority value)
    and only when in use: seen on an event or a receipt (the account logged in, the card was swiped) or
    on another unit. An id that a single CRM contact holds says little about a separate person.
    ``all_keys`` is the table of every unit's keys the "another unit" test reads (``_unit_keys`` holds
    them all on a full run; an incremental run passes the stored keys).
    """
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _units AS
        WITH used AS (
            SELECT k.unit_id, k.id_type, k.id_value FROM _unit_keys k JOIN _units u USING (unit_id)
            WHERE k.id_type IN ('user_id', 'loyalty_id')
              AND (u.source <> 'crm'
                   OR (k.id_type, k.id_value) IN (SELECT (id_type, id_value) FROM {all_keys}
                                                  WHERE id_type IN ('user_id', 'loyalty_id')
                                                    AND (id_type, id_value) IN (
                                                        SELECT (id_type, id_value) FROM _unit_keys)
                                                  GROUP BY ALL HAVING count(*) > 1))
        )
        SELECT u.* REPLACE (ku.id_value AS user_id, kl.id_value AS loyalty_id) FROM _units u
        LEFT JOIN (SELECT unit_id, id_value FROM used WHERE id_type = 'user_id') ku USING (unit_id)
        LEFT JOIN (SELECT unit_id, id_value FROM used WHERE id_type = 'loyalty_id') kl USING (unit_id)
        """
    )


def link_keys(con: duckdb.DuckDBPyConnection, limits: Mapping[str, int], all_keys: str = "_unit_keys") -> None:
    """Temp tables ``_key_members``, ``_key_groups`` and ``_graph_edges`` from ``_unit_keys`` and ``_units``
    (guards 3 and 4). Every holder of a key must be in both tables for its verdict to be right; ``all_keys``
    (``_unit_keys``, or ``identity_unit_keys`` for an incremental run) holds every key of those holders."""
    con.register("_limits_frame", _limits_frame(limits))
    con.execute("CREATE OR REPLACE TEMP TABLE _limits AS SELECT * FROM _limits_frame")
    con.unregister("_limits_frame")
    # Keys held by two or more units, with their guard verdict.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _key_members AS
        SELECT k.id_type, k.id_value, k.unit_id, u.first_canon, u.dob, {who("u")} AS who
        FROM _unit_keys k JOIN _units u USING (unit_id)
        WHERE (k.id_type, k.id_value) IN (
            SELECT (id_type, id_value) FROM _unit_keys GROUP BY id_type, id_value HAVING count(*) > 1)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _key_groups AS
        WITH sizes AS (
            SELECT id_type, id_value, count(*) AS n_units FROM _key_members GROUP BY ALL
        ),
        small AS (
            SELECT s.* FROM sizes s JOIN _limits l USING (id_type) WHERE s.n_units <= l.max_units
        ),
        who AS (
            SELECT DISTINCT m.id_type, m.id_value, m.who
            FROM _key_members m SEMI JOIN small USING (id_type, id_value)
        ),
        contacts AS (  -- the own emails and phones of a card's, phone's or email's nameless holders
            SELECT m.id_type, m.id_value, m.unit_id, o.id_type AS other_type, o.id_value AS other_value
            FROM _key_members m SEMI JOIN small USING (id_type, id_value)
            JOIN {all_keys} o ON o.unit_id = m.unit_id
            WHERE m.first_canon IS NULL AND m.dob IS NULL
              AND m.id_type IN ('loyalty_id', 'phone_e164', 'email_key')
              AND o.id_type IN ('email_key', 'phone_e164') AND o.id_type <> m.id_type
        ),
        conflicts AS (
            SELECT DISTINCT a.id_type, a.id_value FROM who a JOIN who b
              ON a.id_type = b.id_type AND a.id_value = b.id_value AND hash(a.who) < hash(b.who)
            WHERE cdp_disagree(a.who, b.who)
            -- nameless receipts with a staff card, the shop's phone or its email, each with someone's own
            -- email or phone: the key is shared, however nameless its holders are
            UNION
            SELECT DISTINCT a.id_type, a.id_value FROM contacts a JOIN contacts b
              ON a.id_type = b.id_type AND a.id_value = b.id_value AND a.other_type = b.other_type
             AND a.unit_id < b.unit_id
            WHERE a.other_value <> b.other_value
        )
        SELECT s.id_type, s.id_value, s.n_units,
               CASE WHEN s.n_units > l.max_units THEN 'over_limit'
                    WHEN (s.id_type, s.id_value) IN (SELECT (id_type, id_value) FROM conflicts)
                    THEN 'conflict' ELSE 'ok' END AS verdict
        FROM sizes s JOIN _limits l USING (id_type)
        """
    )
    # Edges: a star per clean key; per (key, first name) for conflicting keys whose sub-group agrees on dob.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _graph_edges AS
        WITH clean AS (
            SELECT m.id_type, m.id_value, m.unit_id,
                   min(m.unit_id) OVER (PARTITION BY m.id_type, m.id_value) AS anchor,
                   'shared_key' AS rule
            FROM _key_members m JOIN _key_groups g USING (id_type, id_value) WHERE g.verdict = 'ok'
        ),
        personas AS (
            SELECT m.id_type, m.id_value, m.unit_id, m.first_canon, m.who
            FROM _key_members m JOIN _key_groups g USING (id_type, id_value)
            WHERE g.verdict = 'conflict' AND m.first_canon IS NOT NULL
        ),
        persona_conflicts AS (
            -- one first name, yet two people (dates of birth apart, or each with an account in use)
            SELECT DISTINCT a.id_type, a.id_value, a.first_canon FROM personas a JOIN personas b
              ON a.id_type = b.id_type AND a.id_value = b.id_value AND a.first_canon = b.first_canon
             AND a.unit_id < b.unit_id
            WHERE cdp_disagree(a.who, b.who)
        ),
        soft AS (
            SELECT p.id_type, p.id_value, p.unit_id,
                   min(p.unit_id) OVER (PARTITION BY p.id_type, p.id_value, p.first_canon) AS anchor,
                   'shared_key_same_first_name' AS rule
            FROM personas p ANTI JOIN persona_conflicts c USING (id_type, id_value, first_canon)
        ),
        star AS (SELECT * FROM clean UNION ALL SELECT * FROM soft)
        SELECT DISTINCT least(anchor, unit_id) AS unit_id_l, greatest(anchor, unit_id) AS unit_id_r,
               id_type AS evidence, rule
        FROM star WHERE anchor <> unit_id
        """
    )


def graph_stats(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Counts of the last :func:`build_graph`, by key type: keys, edges, hubs, placeholders, shared units."""
    stats: dict[str, int] = {}
    verdict = "SELECT id_type, count(*) FROM _key_groups WHERE verdict = '{}' GROUP BY 1"
    for name, sql in (
        ("placeholder_values",
         "SELECT id_type, count(DISTINCT id_value) FROM _raw_keys WHERE placeholder GROUP BY 1"),
        ("shared_units", "SELECT id_type, count(*) FROM (SELECT unit_id, id_type FROM _raw_keys "
         "WHERE NOT placeholder GROUP BY ALL HAVING count(*) > 1) GROUP BY 1"),
        ("linking_keys", verdict.format("ok")),
        ("hub_keys_conflict", verdict.format("conflict")),
        ("hub_keys_over_limit", verdict.format("over_limit")),
        ("edges", "SELECT evidence, count(*) FROM _graph_edges GROUP BY 1"),
    ):  # fmt: skip
        total = 0
        for key_type, count in con.execute(sql).fetchall():
            stats[f"{name}.{key_type}"] = int(count)
            total += int(count)
        stats[name] = total
    return stats
