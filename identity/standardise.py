"""Standardisers for identifiers and person attributes.

Pure functions (used by tests, the CLI and the privacy tools) and their vectorised forms for staging.
The same function must be used wherever a value is matched: ingestion, suppression and erasure.

>>> email_match_key("  J.Smith+News@GoogleMail.com ")
'jsmith@gmail.com'
>>> normalise_phone("07700 900123", "GB")
'+447700900123'
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import lru_cache

import duckdb
import idna
import phonenumbers
from duckdb.func import FunctionNullHandling

_EMAIL_RE = re.compile(r"^[a-z0-9._%+'\-]+@[a-z0-9\-]+(\.[a-z0-9\-]+)*\.[a-z]{2,}$")
#: An address beyond ASCII once its domain is in its ASCII form (IDNA): the mailbox name may hold characters of
#: any script (RFC 6531; :func:`normalise_email` allows letters, marks and digits), and the top-level domain
#: may be an internationalised one too (``xn--p1ai``).
_INTERNATIONAL_EMAIL_RE = re.compile(
    r"^(?:[a-z0-9._%+'\-]|[^\x00-\x7f])+@[a-z0-9\-]+(\.[a-z0-9\-]+)*\.([a-z]{2,}|xn--[a-z0-9\-]+)$"
)
_GMAIL_DOMAINS = {"gmail.com", "googlemail.com"}


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() == ""


#: Invisible characters a copy and paste brings along (zero-width space, joiners, word joiner, byte-order
#: mark). They are not whitespace to ``str.strip()``, yet no address holds one: they are dropped wherever
#: they stand in an email.
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
_NO_ZERO_WIDTH = str.maketrans("", "", ZERO_WIDTH)
#: An address as mail clients copy it, after a display name: ``Ann Lee <ann@example.com>``, or in the angle
#: quotes and brackets of other scripts and keyboards (``‹ann@example.com›``, ``«…»``, ``〈…〉``, ``＜…＞``).
#: The same pattern in SQL and Python: both engines read it alike.
_DISPLAY_NAME = r"^[^<>‹›«»〈〉＜＞@]*[<‹«〈＜]([^<>‹›«»〈〉＜＞]+)[>›»〉＞]$"
_DISPLAY_NAME_RE = re.compile(_DISPLAY_NAME)
#: Anything in a field that looks like an address: the pieces between spaces, list and JSON punctuation, quotes
#: and brackets. Also how free text is searched for addresses (:func:`cdp.ingest.text_values`).
ADDRESS_IN_TEXT = re.compile(r"[^\s,;/|<>‹›«»〈〉＜＞()\[\]{}\"']+@[^\s,;/|<>‹›«»〈〉＜＞()\[\]{}\"']+")
#: A field that may hold several addresses, or one inside JSON (``["ann@example.com"]``,
#: ``{"address": "ann@example.com"}``): two at signs, or a JSON bracket. Only such a field is searched for
#: addresses when it does not read as one (:func:`email_addresses`), in SQL and Python alike.
_MAY_HOLD_SEVERAL = r"@[\s\S]*@|[\[\]{}]"  # [\s\S]: a line break too, which "." is not in RE2
_MAY_HOLD_SEVERAL_RE = re.compile(_MAY_HOLD_SEVERAL)
#: Quotes around an address and the punctuation of the sentence it was typed in: ``"ann@example.com".``
_EDGES = r"^[\"']+|[\"'.,;]+$"
_EDGES_RE = re.compile(_EDGES)


def normalise_email(value: object) -> str | None:
    """The deliverable address: trimmed and lower-cased; ``None`` when it is not an email address.

    An address beyond ASCII is also put in Unicode's composed form (NFC), and its domain in the ASCII form
    mail servers use (IDNA 2008 with UTS #46 mapping, the ``idna`` package): ``Jörg@Müller.de`` and
    ``jörg@xn--mller-kva.de`` are one address; ``faß.de`` stays its own domain, not ``fass.de``.

    >>> normalise_email("Jörg@Müller.DE")
    'jörg@xn--mller-kva.de'

    An address after a display name, in quotes or before a full stop is read as the address:

    >>> normalise_email('Ann Lee <Ann.Lee@Example.com>'), normalise_email('"ann.lee@example.com".')
    ('ann.lee@example.com', 'ann.lee@example.com')
    """
    if _blank(value):
        return None
    email = _read_address(str(value))
    if email is None and _MAY_HOLD_SEVERAL_RE.search(str(value)):
        addresses = email_addresses(value)
        return addresses[0] if len(addresses) == 1 else None
    return email


def email_addresses(value: object) -> list[str]:
    """The mailboxes a field names, each once (by :func:`email_match_key`), as :func:`normalise_email` reads
    them, in the order written. A field naming two or more is no one address: ingestion quarantines its row.

    >>> email_addresses('["Ann@Example.com", "ann+shop@example.com", "bob@example.org"]')
    ['ann@example.com', 'bob@example.org']
    """
    if _blank(value):
        return []
    text = str(value).translate(_NO_ZERO_WIDTH)
    whole = _read_address(text)
    if whole is not None:
        return [whole]
    out: dict[str, str] = {}
    for piece in ADDRESS_IN_TEXT.findall(text):
        address = _read_address(piece)
        if address is not None:
            out.setdefault(_match_key(address) or address, address)
    return list(out.values())


def email_count(value: object) -> int:
    """How many mailboxes a field names (:func:`email_addresses`)."""
    return len(email_addresses(value))


def _read_address(value: str) -> str | None:
    """The body of :func:`normalise_email` for a field holding one address."""
    email = value.translate(_NO_ZERO_WIDTH).strip()
    shown = _DISPLAY_NAME_RE.match(email)
    if shown:
        email = shown.group(1)
    email = email.lower().replace(" ", "")
    if email.startswith("mailto:"):
        email = email[len("mailto:") :]
    email = _EDGES_RE.sub("", email)
    if email.isascii():  # fullmatch: "$" alone lets a line break at the end through, which SQL does not
        return email if _EMAIL_RE.fullmatch(email) else None
    local, at, domain = unicodedata.normalize("NFC", email).rpartition("@")
    if not all(c.isascii() or unicodedata.category(c)[0] in "LMN" for c in local):
        return None  # a no-break space, a symbol or an emoji in a mailbox name: a typing accident, not an address
    try:
        domain = idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:  # an empty or overlong label, or a character no domain may hold
        return None
    email = f"{local}{at}{domain}"
    return email if _INTERNATIONAL_EMAIL_RE.fullmatch(email) else None


def email_match_key(value: object) -> str | None:
    """The key two spellings of one mailbox share: ``+tags`` removed, Gmail dots folded.

    >>> email_match_key("John.Smith+shop@gmail.com") == email_match_key("johnsmith@googlemail.com")
    True
    """
    email = normalise_email(value)
    return None if email is None else _match_key(email)


def _match_key(email: str) -> str | None:
    """:func:`email_match_key` of an address already normalised."""
    local, _, domain = email.rpartition("@")
    local = local.split("+", 1)[0]
    if domain in _GMAIL_DOMAINS:
        domain = "gmail.com"
        local = local.replace(".", "")
    if not local:
        return None
    return f"{local}@{domain}"


#: National numbers a form gets when someone types digits in order: "0123456789", "01234 567890", "07000 000000".
_FILLER_NUMBERS = frozenset({"123456789", "1234567890", "12345678901", "987654321", "9876543210"})


def _is_filler(national: str) -> bool:
    """A national number (without its trunk 0) that nobody owns: digits in order, or six zeros or more at its end.
    Judged on the national number, not the E.164 text: +7 912 345 67 89 holds "123456789" and is a real mobile."""
    return national in _FILLER_NUMBERS or national.endswith("000000")


#: A note after a number, ``(mobile)``, ``mob``, ``- home``: phonenumbers reads letters as keypad digits
#: (``(mobile)`` became 662453 more digits). An extension (``ext. 12``, ``x12``) ends in digits and stays.
_PHONE_NOTE = re.compile(r"[\s,;/-]*(\([^()]*[A-Za-z][^()]*\)|[A-Za-z]+\.?)$")


@lru_cache(maxsize=200_000)
def normalise_phone(value: object, region: str = "GB") -> str | None:
    """E.164 form of a phone number written nationally (in ``region``) or internationally.

    >>> normalise_phone("+44 (0)20 7946 0123"), normalise_phone("07700 900123 (mobile)")
    ('+442079460123', '+447700900123')
    """
    if _blank(value):
        return None
    text = str(value).strip()
    while (note := _PHONE_NOTE.search(text)) and note.start() > 0:
        text = text[: note.start()]
    if text.startswith("00"):
        text = "+" + text[2:]
    text = text.replace("(0)", "")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    # "Possible" (right length for the country) rather than "valid": numbering plans change faster than
    # the metadata, and Ofcom's drama ranges (07700 900xxx) are not "valid" yet are real test data.
    national = str(number.national_number)
    if not phonenumbers.is_possible_number(number) or len(set(national)) == 1 or _is_filler(national):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


#: Letters that carry no combining accent, so that NFKD (and DuckDB's ``strip_accents``) leave them alone,
#: and their ASCII spellings: without these "Søren Łukasiewicz" matched as "s ren ukasiewicz".
LETTER_FOLDS = {
    "ø": "o", "ł": "l", "đ": "d", "ð": "d", "ħ": "h", "ı": "i", "ŧ": "t", "ŋ": "n",
    "æ": "ae", "œ": "oe", "ß": "ss", "þ": "th",
}  # fmt: skip
_LETTER_FOLDS = str.maketrans(LETTER_FOLDS)


def fold_accents(text: str) -> str:
    """``text`` in lower case with its accents folded (``"Zoë Søren"`` -> ``"zoe soren"``)."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return plain.lower().translate(_LETTER_FOLDS)


_NAME_DROP = re.compile(r"[^a-z\- ']+")
#: Titles a till or a form puts before the name ("Dr Peter", "Mr P"): dropped when a name follows them.
TITLES = ("mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "dame", "rev")
_TITLE_PATTERN = f"^({'|'.join(TITLES)}) (\\S)"
_TITLE_RE = re.compile(_TITLE_PATTERN)


def normalise_name(value: object) -> str | None:
    """Lower case, accents folded, punctuation other than hyphens dropped, spaces collapsed.

    >>> normalise_name("  O'Brien-SMITH, ")
    'obrien-smith'
    """
    if _blank(value):
        return None
    text = fold_accents(str(value)).replace("'", "").replace(".", " ")
    text = _NAME_DROP.sub(" ", text)
    text = re.sub(r"\s*-\s*", "-", text)
    text = " ".join(text.split()).strip("-")
    text = _TITLE_RE.sub(r"\2", text)
    return text or None


def normalise_postcode(value: object) -> str | None:
    """Upper case with no spaces: ``"sw1a 1aa "`` -> ``"SW1A1AA"``."""
    if _blank(value):
        return None
    text = re.sub(r"[^A-Za-z0-9]", "", str(value)).upper()
    return text or None


# SQL forms of the same rules, for staging millions of rows inside DuckDB. The phone rule has no SQL
# form: it runs through phonenumbers once per distinct value (see identity.staging). Nor has the email rule
# beyond ASCII: the SQL form calls the Python rule for those values (email_functions).

#: The characters Python's ``str.strip()`` strips (those ``str.isspace()`` holds for). SQL's ``trim(x)`` strips
#: spaces only: an email ending in a tab would be a valid address to the Python rules (suppression, erasure)
#: and none to staging and ingestion's suppression check, which would then let it through.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _regex_class(chars: str) -> str:
    """``chars`` as a regular-expression character class, each by its code point."""
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"


#: :data:`WHITESPACE` as a regular-expression class (``trim(x, chars)`` with these is ten times slower).
_WHITESPACE_CLASS = _regex_class(WHITESPACE)


def sql_strip(col: str) -> str:
    """``col`` without leading and trailing whitespace, as ``str.strip()`` has it."""
    return f"regexp_replace({col}, '^{_WHITESPACE_CLASS}+|{_WHITESPACE_CLASS}+$', '', 'g')"


#: The Python rules as DuckDB functions, for values beyond ASCII and fields that may name several addresses
#: (see :func:`email_functions`).
_EMAIL_FUNCTIONS = {
    "cdp_normalise_email": (normalise_email, duckdb.sqltypes.VARCHAR),
    "cdp_email_match_key": (email_match_key, duckdb.sqltypes.VARCHAR),
    "cdp_email_count": (email_count, duckdb.sqltypes.INTEGER),
}


@contextmanager
def email_functions(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """While inside, ``con`` can run :func:`sql_normalise_email` and :func:`sql_email_match_key`: an address
    with a character beyond ASCII (an internationalised domain, a Unicode mailbox name, a pasted zero-width
    space) is read by the Python rule itself, called from SQL for those few values only, so that staging,
    ingestion's suppression check and erasure read it exactly as the Python side does (Unicode lower-casing
    and normal forms have no equal in DuckDB's SQL). The functions are removed on leaving, unless they were
    there before (an enclosing use)."""
    added = []
    try:
        for name, (rule, returns) in _EMAIL_FUNCTIONS.items():
            try:
                con.create_function(
                    name,
                    rule,
                    [duckdb.sqltypes.VARCHAR],
                    returns,
                    null_handling=FunctionNullHandling.SPECIAL,  # the rule answers NULL (no email); DEFAULT refuses
                )
            except duckdb.NotImplementedException:  # "already created": asking duckdb_functions() costs 28 ms
                continue
            added.append(name)
        yield
    finally:
        for name in added:
            con.remove_function(name)


def _beyond_ascii(col: str) -> str:
    """SQL: ``col`` has a character beyond ASCII (its UTF-8 bytes outnumber its characters)."""
    return f"strlen({col}) <> length({col})"


def sql_read_by_python(col: str) -> str:
    """SQL: ``col`` is read by the Python rule (:func:`email_functions`): beyond ASCII, or it may name several
    addresses (a few values: a test that runs on every row, the rule on those only)."""
    return f"({_beyond_ascii(col)} OR regexp_matches({col}, '{_MAY_HOLD_SEVERAL}'))"


def sql_email_count(col: str) -> str:
    """:func:`email_count` in SQL (run inside :func:`email_functions`), for a value that may name several
    addresses; ``NULL`` (not 0) for any other: at most one."""
    return f"CASE WHEN regexp_matches({col}, '{_MAY_HOLD_SEVERAL}') THEN cdp_email_count({col}) END"


def sql_normalise_email(col: str) -> str:
    """:func:`normalise_email` in SQL (run inside :func:`email_functions`)."""
    stripped = sql_strip(col)
    shown = (
        f"CASE WHEN regexp_matches({stripped}, '{_DISPLAY_NAME}') "
        f"THEN regexp_extract({stripped}, '{_DISPLAY_NAME}', 1) ELSE {stripped} END"
    )
    edges = _EDGES.replace("'", "''")
    cleaned = f"regexp_replace(regexp_replace(replace(lower({shown}), ' ', ''), '^mailto:', ''), '{edges}', '', 'g')"
    pattern = _EMAIL_RE.pattern.replace("'", "''")  # the same rule as normalise_email, as a SQL literal
    return (
        f"CASE WHEN {sql_read_by_python(col)} THEN cdp_normalise_email({col}) "
        f"WHEN regexp_matches({cleaned}, '{pattern}') THEN {cleaned} END"
    )


def sql_email_match_key(col: str) -> str:
    """:func:`email_match_key` in SQL (run inside :func:`email_functions`)."""
    key = sql_match_key(sql_normalise_email(col))
    return f"CASE WHEN {sql_read_by_python(col)} THEN cdp_email_match_key({col}) ELSE {key} END"


def sql_match_key(email: str) -> str:
    """:func:`_match_key` in SQL: the match key of ``email``, an address :func:`sql_normalise_email` gave (NULL
    for none) that the Python rule did not read. A query that has the normalised address as a column passes the
    column: the normaliser is SQL of a few kilobytes, written out again at each of its uses here (DuckDB took
    11 ms to plan the web events' staging with it six times over, 5 ms with the column)."""
    # regexp_extract rather than split_part: DuckDB 2.0 fails to bind split_part on an all-NULL column.
    local = f"regexp_extract({email}, '^([^@+]*)', 1)"
    domain = f"regexp_extract({email}, '@(.*)$', 1)"
    return (
        f"CASE WHEN {email} IS NULL OR {local} = '' THEN NULL "
        f"WHEN {domain} IN ('gmail.com', 'googlemail.com') THEN replace({local}, '.', '') || '@gmail.com' "
        f"ELSE {local} || '@' || {domain} END"
    )


def sql_fold_accents(col: str) -> str:
    """``col`` as :func:`fold_accents` has it: lower case, accents stripped, :data:`LETTER_FOLDS` spelled out."""
    folded = f"lower(strip_accents({col}))"
    single = {k: v for k, v in LETTER_FOLDS.items() if len(v) == 1}
    folded = f"translate({folded}, '{''.join(single)}', '{''.join(single.values())}')"
    for letter, spelling in LETTER_FOLDS.items():
        if len(spelling) > 1:
            folded = f"replace({folded}, '{letter}', '{spelling}')"
    return folded


def sql_normalise_name(col: str) -> str:
    folded = sql_fold_accents(f"trim({col})")
    cleaned = f"regexp_replace(replace(replace({folded}, '''', ''), '.', ' '), '[^a-z\\- ]+', ' ', 'g')"
    hyphen = f"regexp_replace({cleaned}, '\\s*-\\s*', '-', 'g')"
    collapsed = f"trim(regexp_replace({hyphen}, '\\s+', ' ', 'g'), ' -')"
    untitled = f"regexp_replace({collapsed}, '{_TITLE_PATTERN}', '\\2')"
    return f"NULLIF({untitled}, '')"


def sql_written_name(col: str, name: bool = True) -> str:
    """A name (or with ``name`` false, an address line or a city) as written: spaces collapsed and, for a name,
    a leading title dropped as in matching; what :func:`sql_display_name` capitalises."""
    written = f"trim(regexp_replace({col}, '{_WHITESPACE_CLASS}+', ' ', 'g'))"
    return f"regexp_replace({written}, '(?i)^({'|'.join(TITLES)})\\.? +(\\S)', '\\2')" if name else written


def sql_display_name(written: str, name: bool = True) -> str:
    """A name as a profile shows it, from ``written`` (:func:`sql_written_name`'s value): as written, and when it
    was written all in one case, capitalised word by word and after hyphens and apostrophes, with "Mc" names as
    McDonald (``O'BRIEN-SMITH`` -> ``O'Brien-Smith``). The matching form has lost the apostrophes and accents,
    which a letter or an export to the customer should keep. With ``name`` false (an address line, a city), an
    apostrophe starts no word (``ST MARY'S ROAD`` -> ``St Mary's Road``). ``written`` is read six times: a query
    that has it as a column passes the column, so that DuckDB does not plan its expression six times over."""
    cap = "upper(c[1]) || c[2:]"
    if name:
        cap = f"CASE WHEN c LIKE 'mc__%' THEN 'Mc' || upper(c[3]) || c[4:] ELSE {cap} END"
    apostrophe = "''''" if name else "chr(0)"  # chr(0): a separator no text holds
    # list_aggr(..., 'string_agg', sep), not array_to_string: DuckDB expands array_to_string into a CASE that
    # writes its list twice, so three nested levels wrote the innermost eight times (planning a CRM batch's
    # staging took twice as long, and evaluating it half as long again). string_split never gives an empty
    # list, the one case where the two differ.
    capitalised = (
        f"list_aggr(list_transform(string_split(lower({written}), ' '), lambda a: list_aggr("
        f"list_transform(string_split(a, '-'), lambda b: list_aggr("
        f"list_transform(string_split(b, {apostrophe}), lambda c: {cap}), 'string_agg', {apostrophe})), "
        f"'string_agg', '-')), 'string_agg', ' ')"
    )
    one_case = f"{written} = lower({written}) OR {written} = upper({written})"
    return f"NULLIF(CASE WHEN {one_case} THEN {capitalised} ELSE {written} END, '')"


def sql_normalise_postcode(col: str) -> str:
    return f"NULLIF(upper(regexp_replace({col}, '[^A-Za-z0-9]', '', 'g')), '')"


#: Record times before this are a system's default ("1970-01-01 00:00:00"), not an event; times later than
#: :data:`CLOCK_SKEW` after the record arrived are a clock or zone mistake. Neither counts as a customer seen
#: (profiles), and the raw Great Expectations suites flag both.
EARLIEST_PLAUSIBLE_TIME = datetime(1990, 1, 1)
CLOCK_SKEW = timedelta(days=1)


def sql_plausible_time(col: str, arrived: str | None) -> str:
    """``col`` when it is a plausible time for a record that arrived at ``arrived`` (a timestamp; None: no
    upper bound), else NULL."""
    late = f" AND {col} <= {arrived} + INTERVAL {CLOCK_SKEW.days} DAY" if arrived else ""
    return f"CASE WHEN {col} >= TIMESTAMP '{EARLIEST_PLAUSIBLE_TIME:%Y-%m-%d}'{late} THEN {col} END"


#: Dates of birth that CRM systems write for "unknown": 1 January 1900 and anything before it (1899-12-31,
#: 0001-01-01), and the end of time. 1 January 1970 (the Unix epoch) is left alone: it is a real birthday too.
PLACEHOLDER_DOB_BEFORE = "1900-01-02"
PLACEHOLDER_DOB_FROM = "9999-01-01"


def sql_plausible_dob(col: str, recorded: str) -> str:
    """``col`` as a date of birth, or NULL when it is a placeholder or later than the record itself
    (``recorded``, a timestamp; NULL: not checked). Kept as it is, a placeholder is the same "date of birth"
    on thousands of contacts: the model reads it as strong evidence that two namesakes are one person."""
    return (
        f"CASE WHEN {col} < DATE '{PLACEHOLDER_DOB_BEFORE}' OR {col} >= DATE '{PLACEHOLDER_DOB_FROM}' "
        f"OR {col} > CAST({recorded} AS DATE) THEN NULL ELSE {col} END"
    )


#: The regions phonenumbers knows, as a SQL list: a record's own ``country`` is the region its national
#: phone numbers are read in (an Irish contact's 087 number is +353, not a UK number).
_PHONE_REGIONS = ", ".join(f"'{r}'" for r in sorted(phonenumbers.SUPPORTED_REGIONS))


def phone_regions(values: Iterable[object], default: str) -> list[str]:
    """The regions a row's phone numbers may be read in, when its columns are not known (a malformed line,
    a quarantined row): ``default`` and any country code among its ``values``. Erasure and suppression try
    them all, so that an Irish contact's national number is found whichever way staging read it."""
    found = {str(v).strip().upper() for v in values if isinstance(v, str)} & phonenumbers.SUPPORTED_REGIONS
    return [default, *sorted(found - {default})]


def sql_phone_region(country: str) -> str:
    """The region a record's phone numbers are read in: its ``country`` when phonenumbers knows it, else
    ``''`` (the installation's ``default_region``)."""
    code = f"upper(trim({country}))"
    return f"CASE WHEN {code} IN ({_PHONE_REGIONS}) THEN {code} ELSE '' END"


def sql_trim_id(col: str) -> str:
    return f"NULLIF({sql_strip(col)}, '')"


_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
#: A UUID in its standard form (RFC 9562): 32 hex digits in groups of 8-4-4-4-12.
UUID_PATTERN = "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_UUID = re.compile(UUID_PATTERN)


def is_uuid(text: str) -> bool:
    """Whether ``text`` is a UUID in its standard form (:data:`UUID_PATTERN`), whatever its case."""
    return len(text) == 36 and _UUID.fullmatch(text) is not None


def sql_is_uuid(expr: str) -> str:
    """:func:`is_uuid` in SQL."""
    return f"(length({expr}) = 36 AND regexp_full_match({expr}, '{UUID_PATTERN}'))"


def normalise_customer_id(value: str) -> str:
    """A customer id as a person typed it: spaces around it go, and the platform's own form is lower-case
    (``CUS_000000042`` is ``cus_000000042``)."""
    value = value.strip()
    return value.lower() if re.fullmatch(r"cus_[0-9]+", value, re.IGNORECASE) else value


def normalise_id(id_type: str, value: object) -> str | None:
    """An account, card, CRM, device or cookie id as it is matched on: trimmed; a UUID in lower case, its
    standard form (RFC 9562 reads UUIDs whatever their case: iOS writes an advertising or vendor id in
    capitals, a consent platform or a CRM may store it in lower case); and a loyalty card number with its
    letters in capitals, as printed on the card (keyed at a till or into the CRM as ``loy10042`` it is card
    ``LOY10042``). Other ids keep their case: an account or cookie id may be case-sensitive. Letters beyond
    ASCII keep theirs, here and in :func:`sql_normalise_id`. ``None`` when nothing is left.

    >>> normalise_id("loyalty_id", " loy10042 "), normalise_id("user_id", " u-Ab1 "), normalise_id("crm_id", " ")
    ('LOY10042', 'u-Ab1', None)
    >>> normalise_id("device_id", "6F9619FF-8B86-D011-B42D-00C04FC964FF")
    '6f9619ff-8b86-d011-b42d-00c04fc964ff'
    """
    if _blank(value):
        return None
    text = str(value).strip()
    if is_uuid(text):
        return text.lower()
    return text.translate(_ASCII_UPPER) if id_type == "loyalty_id" else text


def identifier_readings(text: str, regions: Iterable[str], types: Iterable[str]) -> set[tuple[str, str]]:
    """Every ``(type, value)`` that ``text``, a value as written, reads as among ``types``, in the form
    staging stores it: an email's match key, the phone number in each of ``regions``, an id by
    :func:`normalise_id`. A value of a known column is read as its column's type; one whose column is unknown
    or untrusted (a malformed line, a piece of free text) as every type. Ingestion's suppression check of
    malformed lines and erasure's matching of raw rows, quarantined rows and free text all read values so.

    >>> sorted(identifier_readings(" Ann.Lee@GoogleMail.com", ["GB"], ["email_key", "loyalty_id"]))
    [('email_key', 'annlee@gmail.com'), ('loyalty_id', 'ANN.LEE@GOOGLEMAIL.COM')]
    """
    out: set[tuple[str, str]] = set()
    for id_type in types:
        if id_type == "email_key":
            key = email_match_key(text) if "@" in text else None  # no address without one
            if key:
                out.add((id_type, key))
        elif id_type == "phone_e164":
            out |= {(id_type, e164) for region in regions if (e164 := normalise_phone(text, region))}
        elif (value := normalise_id(id_type, text)) is not None:
            out.add((id_type, value))
    return out


def sql_normalise_id(id_type: str, col: str) -> str:
    """:func:`normalise_id` in SQL. A UUID is found in the value as written, whitespace around it allowed, and
    taken out of it, so that the trimmed value is written once. Written four times (in the test, the UUID's
    case and the other branch), it put the whitespace pattern a hundred times in a staging statement: DuckDB
    took 0.16-0.20 s to plan the batch's eight statements that hold it, now 0.11-0.13 s, and 0.63-0.71 s in
    all for them, now 0.52-0.55 s."""
    trimmed = sql_trim_id(col)
    other = (
        f"translate({trimmed}, '{string.ascii_lowercase}', '{string.ascii_uppercase}')"
        if id_type == "loyalty_id"
        else trimmed
    )
    spaced_uuid = f"{_WHITESPACE_CLASS}*{UUID_PATTERN}{_WHITESPACE_CLASS}*"
    return (
        f"CASE WHEN regexp_full_match({col}, '{spaced_uuid}') "
        f"THEN lower(regexp_extract({col}, '{UUID_PATTERN}')) ELSE {other} END"
    )
