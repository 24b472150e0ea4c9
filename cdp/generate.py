"""A synthetic omnichannel world: a messy inbox of web, app, store, CRM and consent exports, and the
ground truth behind it.

``generate_world(out, customers, seed)`` writes ``out/<source>/`` batch files in the inbox format of
CONTRACT section 1 and, beside the inbox, ``<out>-truth/`` with ``records.csv`` (which person and which
identity unit every well-formed web/app/store/crm record belongs to, its unit's ``evidence_group`` -- the
units of that person that evidence in the data joins to it, directly or through other units -- and
whether that group holds another unit: ``connectable``), ``consent.csv`` (each person's latest consent
per purpose, from the consent events and the app's push opt-in/out events, which the consent ledger also
reads), ``consent_events.csv`` (whose every well-formed consent event is) and ``people.csv``. Values
are written the way people and systems write them (mixed case, stray spaces, typos, nicknames, national
and international phone numbers, Gmail dots and +tags, placeholders, households sharing a landline or an
email, twins, common names, changed surnames, CRM duplicates) and a small share of rows is malformed (an
empty required value or an unparseable timestamp); those rows are
left out of the truth and counted in the summary.

The world is drawn with numpy arrays, so a million rows take seconds; the same seed gives byte-identical
files. Example::

    >>> from pathlib import Path
    >>> summary = generate_world(Path("/tmp/inbox"), customers=200, seed=7)  # doctest: +SKIP
    >>> print(summary)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import itertools
import shutil
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cdp.errors import CdpError, check_output_folder

__all__ = ["GenerateSummary", "generate_world", "MODES", "NICKNAMES"]

MODES = ("omnichannel", "no_shared_ids")
PURPOSES = ("email_marketing", "sms_marketing", "push_marketing", "personalised_ads", "analytics", "profiling")

WINDOW_START = np.datetime64("2026-08-01T00:00:00", "s")
WINDOW_END = np.datetime64("2026-11-01T00:00:00", "s")
_WINDOW = int((WINDOW_END - WINDOW_START) / np.timedelta64(1, "s"))
_DAY = 86_400

# Contract columns per source, in the order files carry them (CONTRACT section 1).
COLUMNS: dict[str, tuple[str, ...]] = {
    "web": (
        "event_id", "event_time", "anonymous_id", "user_id", "email", "event_type", "page_url", "order_id",
        "revenue", "currency", "utm_source", "utm_medium", "utm_campaign",
    ),
    "app": (
        "event_id", "event_time", "device_id", "user_id", "email", "phone", "event_type", "platform",
        "app_version", "order_id", "revenue", "currency",
    ),
    "store": (
        "transaction_id", "transaction_time", "store_id", "loyalty_id", "email", "phone", "first_name",
        "last_name", "postcode", "amount", "currency", "items",
    ),
    "crm": (
        "crm_id", "first_name", "last_name", "email", "phone", "date_of_birth", "address_line1",
        "address_line2", "city", "postcode", "country", "loyalty_id", "user_id", "created_at", "updated_at",
    ),
    "consent": (
        "consent_id", "event_time", "purpose", "status", "source", "policy_version", "email", "phone",
        "user_id", "crm_id", "loyalty_id", "device_id", "anonymous_id",
    ),
}  # fmt: skip
REQUIRED = {
    "web": ("event_id", "event_time", "anonymous_id"),
    "app": ("event_id", "event_time", "device_id"),
    "store": ("transaction_id", "transaction_time"),
    "crm": ("crm_id",),
    "consent": ("consent_id", "event_time", "purpose", "status"),
}
KEY = {"web": "event_id", "app": "event_id", "store": "transaction_id", "crm": "crm_id", "consent": "consent_id"}
UNIT = {"web": "anonymous_id", "app": "device_id", "store": "transaction_id", "crm": "crm_id"}
RECORD_SOURCES = ("web", "app", "store", "crm")
_DEFAULT_FILES = {"web": 6, "app": 4, "store": 4, "crm": 3, "consent": 3}
# One column per source that only some batches carry: ingestion must keep it, not fail on it.
_EXTRA_COLUMN = {"web": "user_agent", "store": "till_id", "crm": "source_system"}

# ---------------------------------------------------------------------------------------------------------
# Reference data. Names are written in their display form; nicknames mirror identity/data/nicknames.csv.

_MALE = (
    "James", "John", "Robert", "Michael", "William", "David", "Richard", "Thomas", "Christopher", "Daniel", "Matthew",
    "Andrew", "Joseph", "Anthony", "Stephen", "Peter", "Edward", "Samuel", "Benjamin", "Jonathan", "Nicholas",
    "Alexander", "Philip", "Patrick", "Henry", "Charles", "Frederick", "Raymond", "Kenneth", "Gregory", "George",
    "Oliver", "Mohammed", "Ali", "Liam", "Noah", "Oscar", "Arthur", "Leo", "Ethan", "Ryan", "Adam", "Luke", "José",
    "Seán", "Owen", "Callum", "Kieran", "Connor", "Dylan", "Ravi", "Arjun", "Tariq", "Wei", "Piotr",
)  # fmt: skip
_FEMALE = (
    "Elizabeth", "Sarah", "Emma", "Catherine", "Katherine", "Margaret", "Susan", "Jennifer", "Rebecca", "Victoria",
    "Jessica", "Samantha", "Amanda", "Patricia", "Deborah", "Christine", "Natalie", "Charlotte", "Abigail", "Eleanor",
    "Alexandra", "Nicola", "Joanne", "Sandra", "Barbara", "Jacqueline", "Olivia", "Amelia", "Isla", "Ava", "Mia",
    "Emily", "Sophie", "Grace", "Lucy", "Hannah", "Chloé", "Zoë", "Siân", "Aoife", "Priya", "Fatima", "Aisha", "Anna",
    "Laura", "Rachel", "Helen", "Claire", "Louise", "Mary",
)  # fmt: skip
_SURNAMES = (
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas", "Johnson", "Roberts",
    "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes", "Green", "Hall", "Lewis", "Harris",
    "Clarke", "Patel", "Jackson", "Wood", "Turner", "Martin", "Cooper", "Hill", "Ward", "Morris", "Moore", "Clark",
    "Lee", "King", "Baker", "Harrison", "Morgan", "Allen", "James", "Scott", "Phillips", "Watson", "Davis", "Parker",
    "Price", "Bennett", "Young", "Griffiths", "Mitchell", "Kelly", "Cook", "Carter", "Richardson", "Bailey",
    "Collins", "Bell", "Shaw", "Murphy", "Miller", "Cox", "Richards", "Khan", "Marshall", "Anderson", "Simpson",
    "Ellis", "Adams", "Singh", "Begum", "Wilkinson", "Foster", "Chapman", "Powell", "Webb", "Rogers", "Gray", "Mason",
    "Ali", "Hunt", "Hussain", "Campbell", "Matthews", "Owen", "Palmer", "Holmes", "Mills", "Barnes", "Knight",
    "Lloyd", "Butler", "Russell", "Barker", "Fisher", "Stevens", "Jenkins", "Murray", "Dixon", "Harvey", "O'Brien",
    "O'Connor", "McDonald", "MacLeod", "Smith-Jones", "Fernández", "Nowak", "Müller", "Zhang", "Nguyen", "Okafor",
    "da Silva",
)  # fmt: skip
NICKNAMES: dict[str, tuple[str, ...]] = {
    "Robert": ("Bob", "Rob", "Bobby", "Robbie"), "William": ("Bill", "Will", "Billy"),
    "Elizabeth": ("Liz", "Beth", "Lizzie", "Betty"), "James": ("Jim", "Jimmy", "Jamie"),
    "Michael": ("Mike", "Mick"), "David": ("Dave",), "Richard": ("Rick", "Rich", "Dick"),
    "Thomas": ("Tom", "Tommy"), "Christopher": ("Chris", "Kit"), "Daniel": ("Dan", "Danny"),
    "Matthew": ("Matt",), "Andrew": ("Andy",), "Joseph": ("Joe",), "Anthony": ("Tony",),
    "Stephen": ("Steve",), "Peter": ("Pete",), "Edward": ("Ed", "Ted", "Eddie"), "Samuel": ("Sam",),
    "Benjamin": ("Ben",), "Jonathan": ("Jon",), "Nicholas": ("Nick",), "Alexander": ("Alex",),
    "Philip": ("Phil",), "Patrick": ("Pat",), "Henry": ("Harry",), "Charles": ("Charlie",),
    "Frederick": ("Fred", "Freddie"), "Raymond": ("Ray",), "Kenneth": ("Ken",), "Gregory": ("Greg",),
    "John": ("Johnny", "Jack"), "Catherine": ("Kate", "Cathy"), "Katherine": ("Kate", "Katie", "Kathy"),
    "Margaret": ("Maggie", "Meg", "Peggy"), "Susan": ("Sue", "Susie"), "Jennifer": ("Jen", "Jenny"),
    "Rebecca": ("Becky",), "Victoria": ("Vicky",), "Jessica": ("Jess",), "Samantha": ("Sam",),
    "Amanda": ("Mandy",), "Patricia": ("Pat",), "Deborah": ("Debbie",), "Christine": ("Chris", "Chrissy"),
    "Natalie": ("Nat",), "Charlotte": ("Charlie",), "Abigail": ("Abby",), "Eleanor": ("Ellie",),
    "Alexandra": ("Alex",), "Nicola": ("Nicky",), "Joanne": ("Jo",), "Sandra": ("Sandy",),
    "Barbara": ("Barb",), "Jacqueline": ("Jackie",),
}  # fmt: skip
_STREETS = (
    "High", "Station", "Church", "Park", "Victoria", "Green", "Manor", "Mill", "Queen's", "King", "London", "Grange",
    "Alexandra", "Albert", "York", "Springfield", "Windsor", "Chestnut", "Oak", "Elm", "Beech", "Willow", "Meadow",
    "Orchard", "Highfield", "St John's", "North", "South", "West", "Mount Pleasant", "Cedar", "Hawthorn", "Rosemary",
    "Cromwell", "Nelson", "Wellington", "Marlborough", "Belmont", "Richmond", "Stanley",
)  # fmt: skip
_SUFFIXES = ("Road", "Street", "Lane", "Avenue", "Close", "Drive", "Grove", "Crescent", "Way", "Gardens")
_ABBREV = {
    "Road": "Rd", "Street": "St", "Lane": "Ln", "Avenue": "Ave", "Close": "Cl", "Drive": "Dr", "Grove": "Gr",
    "Crescent": "Cres", "Way": "Way", "Gardens": "Gdns",
}  # fmt: skip
# city, postcode areas, landline area code (only codes whose numbers the phonenumbers metadata accepts)
_CITIES = (
    ("London", ("SW", "SE", "N", "E", "W", "NW"), "020", 0.30),
    ("Manchester", ("M",), "0161", 0.09),
    ("Birmingham", ("B",), "", 0.08),
    ("Glasgow", ("G",), "0141", 0.06),
    ("Edinburgh", ("EH",), "0131", 0.05),
    ("Liverpool", ("L",), "0151", 0.06),
    ("Newcastle upon Tyne", ("NE",), "0191", 0.05),
    ("Leeds", ("LS",), "", 0.06),
    ("Bristol", ("BS",), "", 0.06),
    ("Sheffield", ("S",), "", 0.04),
    ("Nottingham", ("NG",), "", 0.04),
    ("Cardiff", ("CF",), "", 0.04),
    ("Brighton", ("BN",), "", 0.04),
    ("Oxford", ("OX",), "", 0.03),
)
_EMAIL_DOMAINS = (
    ("gmail.com", 0.34), ("hotmail.co.uk", 0.12), ("outlook.com", 0.10), ("yahoo.co.uk", 0.08),
    ("icloud.com", 0.08), ("btinternet.com", 0.06), ("googlemail.com", 0.04), ("sky.com", 0.04),
    ("live.co.uk", 0.04), ("aol.com", 0.02), ("protonmail.com", 0.02), ("virginmedia.com", 0.03),
    ("nhs.net", 0.03),
)  # fmt: skip
_HANDLE_WORDS = (
    "sunny", "blue", "redfox", "skater", "gamer", "bookworm", "runner", "foodie", "dreamer", "tiger", "pixel",
    "storm",
)  # fmt: skip
_PLACEHOLDER_IDS = ("-1", "null", "000000", "NULL", "0")
_PLACEHOLDER_EMAILS = ("test@test.com", "noemail@noemail.com", "none@none.com")
_PLACEHOLDER_PHONES = ("00000000000", "0", "-1")
_JUNK_TIMES = ("not a date", "2026-13-45T25:61:00Z", "31/02/2026 10:00", "yesterday", "0000-00-00 00:00:00")
_PAGES = {
    "page_view": ("/", "/sale", "/new-in", "/women", "/men", "/home", "/help/delivery", "/stores"),
    "product_view": ("/p/{n}",),
    "add_to_cart": ("/basket",),
    "checkout": ("/checkout",),
    "purchase": ("/checkout/confirmation",),
    "sign_up": ("/account/register",),
    "newsletter_signup": ("/newsletter",),
    "login": ("/account/login",),
}
_UTM = (
    ("google", "cpc", "autumn_sale"), ("facebook", "social", "new_in"), ("newsletter", "email", "weekly"),
    ("instagram", "social", "influencer_oct"), ("bing", "cpc", "brand"), ("google", "organic", ""),
)  # fmt: skip
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64)", "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6)", "Mozilla/5.0 (Linux; Android 15; Pixel 9)",
)  # fmt: skip

# Identifier kinds in the connectability key space (kind * _K + value index).
_K = 10**10
_EMAIL, _PHONE, _USER, _LOYALTY, _FUZZY = 1, 2, 3, 4, 5


@dataclass
class GenerateSummary:
    """What one run of :func:`generate_world` wrote: counts only, no personal data."""

    inbox: Path
    truth: Path
    mode: str
    seed: int
    people: int
    households: int
    #: rows written per source, malformed rows and CRM re-exports included
    rows: dict[str, int] = field(default_factory=dict)
    #: well-formed web/app/store/crm records per source (one per key: what records.csv holds)
    records: dict[str, int] = field(default_factory=dict)
    #: rows per source with an empty or unparseable required value (ingestion must quarantine them)
    malformed: dict[str, int] = field(default_factory=dict)
    #: well-formed consent events that name no one readably (ingestion quarantines them too): a grant whose only
    #: identifier is a mistyped email (``jo@@gmail.com``). A withdrawal so written still reaches its subject.
    unreadable: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    consent_events: int = 0
    seconds: float = 0.0

    @property
    def malformed_rows(self) -> int:
        return sum(self.malformed.values())

    @property
    def unreadable_rows(self) -> int:
        return sum(self.unreadable.values())

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def lines(self) -> list[str]:
        unreadable = f" and {self.unreadable_rows:,} unreadable consent grants" if self.unreadable_rows else ""
        out = [
            f"Generated {self.mode} world (seed {self.seed}): {self.people:,} people in "
            f"{self.households:,} households, {self.total_rows:,} rows in {sum(self.files.values())} files, "
            f"{self.malformed_rows:,} malformed{unreadable} "
            f"({self.seconds:.1f}s)"
        ]
        for source in (*RECORD_SOURCES, "consent"):
            if source in self.rows:
                out.append(
                    f"  {source:<8} {self.rows[source]:>10,} rows in {self.files.get(source, 0):>3} files, "
                    f"{self.malformed.get(source, 0):,} malformed{self._unreadable_note(source)}"
                )
        out.append(f"  inbox  {self.inbox}")
        out.append(f"  truth  {self.truth}")
        return out

    def _unreadable_note(self, source: str) -> str:
        rows = self.unreadable.get(source, 0)
        return f", {rows:,} grants whose only identifier is a mistyped email" if rows else ""

    def __str__(self) -> str:
        return "\n".join(self.lines())


# ---------------------------------------------------------------------------------------------------------
# Small vectorised helpers


def _zipf(n: int, offset: float = 4.0) -> np.ndarray:
    w = 1.0 / (np.arange(n) + offset)
    return w / w.sum()


def _hex_ids(rng: np.random.Generator, n: int, nbytes: int = 16, dashed: bool = True, upper: bool = False):
    """n random hex identifiers (uuid-shaped when ``dashed``), built without a Python loop."""
    raw = np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8).reshape(n, nbytes)
    digits = np.frombuffer(b"0123456789ABCDEF" if upper else b"0123456789abcdef", dtype=np.uint8)
    chars = np.empty((n, nbytes * 2), dtype=np.uint8)
    chars[:, 0::2] = digits[raw >> 4]
    chars[:, 1::2] = digits[raw & 15]
    if dashed and nbytes == 16:
        chars = np.insert(chars, [8, 12, 16, 20], ord("-"), axis=1)
    chars = np.ascontiguousarray(chars)
    return chars.view(f"S{chars.shape[1]}")[:, 0].astype(str).astype(object)


def _iso(seconds: np.ndarray, suffix: str = "Z", sep: str = "T") -> np.ndarray:
    """Seconds after the epoch as ISO 8601 strings."""
    if len(seconds) == 0:
        return np.empty(0, dtype=object)
    s = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s").astype(object)
    if sep != "T":
        s = np.char.replace(s.astype(str), "T", sep).astype(object)
    return s + suffix if suffix else s


def _where(condition: Any, values: Any, other: Any = None) -> np.ndarray:
    """``np.where`` over object arrays; ``None`` (the default) stands for a missing value."""
    return np.where(condition, np.asarray(values, dtype=object), np.asarray(other, dtype=object))


def _present(values: Any) -> np.ndarray:
    """Boolean mask of the values that are not None (also for empty arrays)."""
    return np.fromiter((v is not None for v in values), dtype=bool, count=len(values))


def _pick(rng: np.random.Generator, options: Any, n: int, p: Any = None) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.choice(len(options), size=n, p=p)]


def _segments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For per-parent counts: the parent index of every child and the child's position within its parent."""
    parent = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    pos = np.arange(counts.sum()) - np.repeat(starts, counts)
    return parent, pos


@functools.lru_cache(maxsize=4096)
def _fold(s: str) -> str:
    """ascii letters only, for building email local parts from names."""
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()
    return "".join(c for c in s.lower() if c.isalpha())


_KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"


def _typo(s: str, r: float) -> str:
    """One realistic keying error: drop, swap, double or replace one letter (``r`` is a uniform draw)."""
    if len(s) < 4:
        return s
    i = 1 + int(r * 1000) % (len(s) - 2)
    kind = int(r * 4)
    if kind == 0:
        return s[:i] + s[i + 1 :]
    if kind == 1:
        return s[:i] + s[i + 1] + s[i] + s[i + 2 :]
    if kind == 2:
        return s[:i] + s[i] + s[i:]
    c = _KEYBOARD[int(r * 100_000) % len(_KEYBOARD)]
    return s[:i] + (c.upper() if s[i].isupper() else c) + s[i + 1 :]


def _case(s: str, k: int) -> str:
    """Ways people and forms write a value: as is, lower, UPPER, stray spaces."""
    if k == 0:
        return s
    if k == 1:
        return s.lower()
    if k == 2:
        return s.upper()
    if k == 3:
        return " " + s + " "
    return s + "  "


def _messy_text(rng: np.random.Generator, values: np.ndarray, p_typo, p_case=None) -> np.ndarray:
    n = len(values)
    case = rng.choice(5, size=n, p=p_case or (0.70, 0.12, 0.08, 0.05, 0.05))
    typo = rng.random(n) < p_typo
    r = rng.random(n)
    out = np.empty(n, dtype=object)
    for i, v in enumerate(values):
        if v is None:
            out[i] = None
            continue
        out[i] = _case(_typo(v, r[i]) if typo[i] else v, case[i])
    return out


# ---------------------------------------------------------------------------------------------------------
# Phones and emails: one canonical value per index, with the ways it gets written precomputed


def _phone_variants(national: str) -> tuple[str, ...]:
    """national is '0' + digits, e.g. 07700900123 or 02079460123 or 01614960123."""
    if national.startswith("07"):
        head, tail = national[:5], national[5:]
    elif national.startswith("02"):
        head, tail = national[:3], national[3:7] + " " + national[7:]
    else:
        head, tail = national[:4], national[4:7] + " " + national[7:]
    intl = head[1:]
    return (
        f"{head} {tail}",
        national,
        f"+44 {intl} {tail}",
        "+44" + national[1:],
        f"0044 {intl} {tail}",
        f"({head}) {tail}",
        f"+44 (0){intl} {tail}",
    )


_PHONE_WEIGHTS = (0.38, 0.18, 0.16, 0.10, 0.06, 0.06, 0.06)


def _email_variants(email: str) -> tuple[str, ...]:
    local, domain = email.split("@")
    title = local[:1].upper() + local[1:] + "@" + domain.capitalize()
    if domain in ("gmail.com", "googlemail.com"):
        other = "googlemail.com" if domain == "gmail.com" else "gmail.com"
        folded = local.replace(".", "") if "." in local else local[:2] + "." + local[2:]
        tricks = (f"{folded}@{domain}", f"{local}+shop@{domain}", f"{local}@{other}")
    else:
        tricks = (f"{local}+news@{domain}", email, email)
    return (email, title, " " + email + " ", email.upper(), *tricks)


_EMAIL_WEIGHTS = (0.58, 0.12, 0.05, 0.04, 0.09, 0.08, 0.04)


class _Contacts:
    """Global tables of canonical emails and phones, each indexable by the records that carry them."""

    def __init__(self) -> None:
        self.emails: list[str] = []
        self.email_keys: set[str] = set()
        self.phones: list[str] = []

    def add_email(self, local: str, domain: str, salt: int) -> int:
        local = local.strip(".") or "customer"
        key_domain = "gmail.com" if domain == "googlemail.com" else domain
        candidate, n = local, 0
        while (candidate.replace(".", "") + "@" + key_domain) in self.email_keys:
            n += 1
            candidate = f"{local}{(salt + n) % 1000}" if n < 5 else f"{local}{salt}{n}"
        self.email_keys.add(candidate.replace(".", "") + "@" + key_domain)
        self.emails.append(f"{candidate}@{domain}")
        return len(self.emails) - 1

    def add_phones(self, nationals: list[str]) -> np.ndarray:
        start = len(self.phones)
        self.phones.extend(nationals)
        return np.arange(start, len(self.phones))

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        e = np.array([_email_variants(x) for x in self.emails], dtype=object).reshape(-1, 7)
        p = np.array([_phone_variants(x) for x in self.phones], dtype=object).reshape(-1, 7)
        return e, p


def _unique_numbers(rng: np.random.Generator, n: int, space: int) -> np.ndarray:
    """n distinct numbers in [0, space) in random order (an affine permutation: cheap for huge spaces)."""
    if n > space:
        raise CdpError(f"cannot draw {n} distinct numbers from {space}")
    primes = (1_000_003, 999_983, 1_299_709, 15_485_863, 32_452_843, 49_979_687)
    a = next(p for p in primes[int(rng.integers(len(primes))) :] + primes if space % p)
    b = int(rng.integers(space))
    return (a * np.arange(n, dtype=np.int64) + b) % space


# ---------------------------------------------------------------------------------------------------------
# People and households


@dataclass
class _World:
    n: int
    household: np.ndarray  # person -> household
    first: np.ndarray  # display first name
    last: np.ndarray  # current surname
    maiden: np.ndarray  # former surname or None
    dob: np.ndarray  # datetime64[D]
    emails: np.ndarray  # (n, 2) personal email indexes, -1 when none (a surname changer's old one first)
    mobile: np.ndarray  # phone index or -1
    user: np.ndarray  # user_id string or None
    loyalty: np.ndarray  # loyalty_id string or None
    # households
    hh_street: np.ndarray  # (number, street index, suffix index): the first address line, in pieces
    hh_flat: np.ndarray  # "Flat 3" or None
    hh_city: np.ndarray
    hh_postcode: np.ndarray
    hh_landline: np.ndarray
    hh_family_email: np.ndarray
    contacts: _Contacts
    email_table: np.ndarray  # (emails, 7) ways each email gets written; see _email_variants
    phone_table: np.ndarray  # (phones, 7) ways each phone number gets written


def _postcodes(rng: np.random.Generator, areas: np.ndarray) -> np.ndarray:
    letters = np.array(list("ABDEFGHJLNPQRSTUWXYZ"), dtype=object)
    n = len(areas)
    district = rng.integers(1, 21, n).astype(str).astype(object)
    sector = rng.integers(0, 10, n).astype(str).astype(object)
    return areas + district + " " + sector + letters[rng.integers(0, 20, n)] + letters[rng.integers(0, 20, n)]


def _people(rng: np.random.Generator, n: int) -> _World:
    # Households: sizes 1-4; members 0 and 1 are adults of an age, 2 and 3 their grown-up children.
    sizes = rng.choice([1, 2, 3, 4], size=n, p=[0.40, 0.38, 0.14, 0.08])
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    sizes[-1] -= sizes.sum() - n
    sizes = sizes[sizes > 0]
    h = len(sizes)
    household, rank = _segments(sizes)

    city_w = np.array([c[3] for c in _CITIES])
    hh_city_idx = rng.choice(len(_CITIES), size=h, p=city_w / city_w.sum())
    areas = np.array(
        [_CITIES[c][1][int(r * len(_CITIES[c][1]))] for c, r in zip(hh_city_idx, rng.random(h), strict=True)]
    )
    hh_postcode = _postcodes(rng, areas.astype(object))
    hh_city = np.array([_CITIES[c][0] for c in hh_city_idx], dtype=object)
    numbers = rng.integers(1, 200, h)
    streets = rng.choice(len(_STREETS), size=h, p=_zipf(len(_STREETS), 3))
    suffixes = rng.choice(len(_SUFFIXES), size=h)
    hh_street = np.stack([numbers, streets, suffixes], axis=1)
    flats = rng.random(h) < 0.18
    hh_flat = _where(flats, np.char.add("Flat ", rng.integers(1, 30, h).astype(str)).astype(object))
    hh_surname = rng.choice(len(_SURNAMES), size=h, p=_zipf(len(_SURNAMES), 6))

    sex = rng.random(n) < 0.5  # True = female
    fem = rng.choice(len(_FEMALE), size=n, p=_zipf(len(_FEMALE), 5))
    mal = rng.choice(len(_MALE), size=n, p=_zipf(len(_MALE), 5))
    first = np.where(sex, np.array(_FEMALE, dtype=object)[fem], np.array(_MALE, dtype=object)[mal])
    own_surname = rng.choice(len(_SURNAMES), size=n, p=_zipf(len(_SURNAMES), 6))
    shares = (sizes[household] > 1) & (rng.random(n) < 0.8)
    last = np.array(_SURNAMES, dtype=object)[np.where(shares, hh_surname[household], own_surname)]

    base = np.datetime64("1946-01-01") + rng.integers(0, 44 * 365, h).astype("timedelta64[D]")  # to 1989
    partner_gap = rng.integers(-6 * 365, 6 * 365, n).astype("timedelta64[D]")
    child_gap = rng.integers(22 * 365, 36 * 365, n).astype("timedelta64[D]")
    dob = base[household] + np.where(rank == 0, 0, np.where(rank == 1, partner_gap, child_gap))
    cap = np.datetime64("2007-12-31")  # every customer is an adult
    dob = np.where(dob > cap, cap - rng.integers(0, 12 * 365, n).astype("timedelta64[D]"), dob)
    dob = dob.astype("datetime64[D]")

    # Twins: in some families with two children, the younger one shares the elder's birthday and surname.
    twin = (rank == 3) & (rng.random(n) < 0.35)
    idx = np.flatnonzero(twin)
    dob[idx] = dob[idx - 1]
    last[idx] = last[idx - 1]
    same = idx[first[idx] == first[idx - 1]]
    first[same] = np.where(sex[same], "Hannah", "Oliver")
    first[same[first[same - 1] == first[same]]] = "Grace"

    # Common names: a share of single people are all called John Smith (different people!).
    common = (sizes[household] == 1) & ~sex & (rng.random(n) < 0.06)
    first[common], last[common] = "John", "Smith"
    common_f = (sizes[household] == 1) & sex & (rng.random(n) < 0.01)
    first[common_f], last[common_f] = "Sarah", "Jones"

    # Surname changers: partners who took the household surname; their old records carry the old one.
    maiden = np.full(n, None, dtype=object)
    changed = (rank == 1) & shares & sex & (rng.random(n) < 0.25)
    maiden[changed] = np.array(_SURNAMES, dtype=object)[own_surname[changed]]
    maiden[changed & (maiden == last)] = "Hale"

    contacts = _Contacts()
    emails = np.full((n, 2), -1, dtype=np.int64)
    has_email = rng.random(n) < 0.9
    has_second = (rng.random(n) < 0.25) | changed
    domain_w = np.array([d[1] for d in _EMAIL_DOMAINS])
    doms = rng.choice(len(_EMAIL_DOMAINS), size=(n, 2), p=domain_w / domain_w.sum())
    pattern = rng.choice(7, size=(n, 2), p=(0.30, 0.15, 0.12, 0.13, 0.08, 0.14, 0.08))
    nums = rng.integers(1, 99, (n, 2))
    years = (dob.astype("datetime64[Y]").astype(int) + 1970) % 100
    for i in range(n):
        if not has_email[i]:
            continue
        f, la = _fold(first[i]), _fold(last[i])
        names = [(f, _fold(maiden[i])), (f, la)] if changed[i] else [(f, la), (f, la)]
        for j in range(2 if has_second[i] else 1):
            fn, ln = names[j]
            k = pattern[i, j]
            local = (
                f"{fn}.{ln}", f"{fn}{ln}", f"{fn[:1]}{ln}", f"{fn}.{ln}{years[i]:02d}", f"{fn}_{ln}",
                f"{_HANDLE_WORDS[nums[i, j] % len(_HANDLE_WORDS)]}{nums[i, j]}", f"{ln}.{fn}",
            )[k]  # fmt: skip
            emails[i, j] = contacts.add_email(local, _EMAIL_DOMAINS[doms[i, j]][0], i)

    # Unique mobile numbers: 07 + [45789] + 8 digits.
    has_mobile = rng.random(n) < 0.82
    mobile = np.full(n, -1, dtype=np.int64)
    codes = _unique_numbers(rng, int(has_mobile.sum()), 5 * 10**8)
    lead = np.array(list("45789"))[codes // 10**8]
    nationals = [f"07{a}{b:08d}" for a, b in zip(lead, codes % 10**8, strict=True)]
    mobile[has_mobile] = contacts.add_phones(nationals)

    # Household landlines (where the city's area code is one the phone metadata accepts) and family emails.
    hh_landline = np.full(h, -1, dtype=np.int64)
    wants = rng.random(h) < 0.35
    for c, (_, _, code, _) in enumerate(_CITIES):
        sel = np.flatnonzero(wants & (hh_city_idx == c))
        if not code or not len(sel):
            continue
        if code == "020":
            nums_ = _unique_numbers(rng, len(sel), 3 * 10**7)
            lines = [f"020{'378'[x // 10**7]}{x % 10**7:07d}" for x in nums_]
        else:
            nums_ = _unique_numbers(rng, len(sel), 7 * 10**6)
            lines = [f"{code}{2 + x // 10**6}{x % 10**6:06d}" for x in nums_]
        hh_landline[sel] = contacts.add_phones(lines)
    hh_family_email = np.full(h, -1, dtype=np.int64)
    fam = np.flatnonzero((sizes > 1) & (rng.random(h) < 0.18))
    fam_dom = rng.choice(len(_EMAIL_DOMAINS), size=len(fam), p=domain_w / domain_w.sum())
    for j, hh in enumerate(fam):
        sn = _fold(_SURNAMES[hh_surname[hh]])
        local = f"the{sn}s" if j % 2 else f"{sn}family"
        hh_family_email[hh] = contacts.add_email(local, _EMAIL_DOMAINS[fam_dom[j]][0], int(hh))

    has_account = rng.random(n) < 0.6
    user = np.full(n, None, dtype=object)
    user[has_account] = ("u" + pd.Series(100_000 + rng.permutation(int(has_account.sum()))).astype(str)).values
    has_loyalty = rng.random(n) < 0.45
    loyalty = np.full(n, None, dtype=object)
    loyalty[has_loyalty] = ("LOY" + pd.Series(10_000_000 + rng.permutation(int(has_loyalty.sum()))).astype(str)).values

    email_table, phone_table = contacts.tables()
    return _World(
        n=n, household=household, first=first, last=last, maiden=maiden, dob=dob, emails=emails,
        mobile=mobile, user=user, loyalty=loyalty, hh_street=hh_street, hh_flat=hh_flat,
        hh_city=hh_city, hh_postcode=hh_postcode, hh_landline=hh_landline, hh_family_email=hh_family_email,
        contacts=contacts,
        email_table=email_table,
        phone_table=phone_table,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Records. Every builder returns (frame of contract columns as strings, internal arrays) where the
# internal arrays are: person per row, unit code per row, row time (seconds) and the identifier keys
# (row index, key code) that could connect the row's unit to another unit of the same person.


@dataclass
class _Part:
    frame: pd.DataFrame
    person: np.ndarray
    unit: np.ndarray  # int64 unit code, unique within the source
    seconds: np.ndarray
    key_rows: list[np.ndarray] = field(default_factory=list)
    key_codes: list[np.ndarray] = field(default_factory=list)
    e164: np.ndarray | None = None  # no_shared_ids CRM: each record's own phone, canonical
    #: fuzzy keys (row, what the key says: "pair|value|value", the person's first name), see _fuzzy_keys
    fuzzy: list[pd.DataFrame] = field(default_factory=list)

    def keys(self, rows: np.ndarray, codes: np.ndarray) -> None:
        self.key_rows.append(np.asarray(rows, dtype=np.int64))
        self.key_codes.append(np.asarray(codes, dtype=np.int64))


def _choose_email(rng, w: _World, person: np.ndarray, p_second, p_family: float = 0.0) -> np.ndarray:
    """For rows of ``person``: an email index (first, second or household email) or -1.

    A surname changer's current address is the second one (their first carries the old surname), so
    their rows always take the second unless a caller sets it explicitly.
    """
    n = len(person)
    primary, second = w.emails[person, 0], w.emails[person, 1]
    changed = _present(w.maiden[person])
    family = w.hh_family_email[w.household[person]]
    take_second = (second >= 0) & ((rng.random(n) < p_second) | changed)
    out = np.where(take_second, second, primary)
    use_family = (rng.random(n) < p_family) & (family >= 0)
    return np.where(use_family, family, out)


def _write_email(rng, w: _World, idx: np.ndarray, part: _Part | None, rows: np.ndarray, p_placeholder: float):
    """Messy email strings for rows (idx -1 -> None); adds email keys. Returns the string array."""
    n = len(idx)
    variant = rng.choice(7, size=n, p=_EMAIL_WEIGHTS)
    out = np.full(n, None, dtype=object)
    ok = idx >= 0
    out[ok] = w.email_table[idx[ok], variant[ok]]
    placeholder = rng.random(n) < p_placeholder
    typo = ok & ~placeholder & (rng.random(n) < 0.01)
    if typo.any():  # a mistyped domain: a different, dead address
        out[typo] = [s.replace("@", "@@") if k % 2 else s.replace(".com", ".con").replace(".co.uk", ".co") for
                     k, s in enumerate(out[typo])]  # fmt: skip
    out[placeholder] = _pick(rng, _PLACEHOLDER_EMAILS, int(placeholder.sum()))
    keep = ok & ~placeholder & ~typo
    if part is not None:
        part.keys(rows[keep], _EMAIL * _K + idx[keep])
    return out


def _write_phone(rng, w: _World, idx: np.ndarray, part: _Part | None, rows: np.ndarray, p_placeholder: float):
    n = len(idx)
    variant = rng.choice(7, size=n, p=_PHONE_WEIGHTS)
    out = np.full(n, None, dtype=object)
    ok = idx >= 0
    out[ok] = w.phone_table[idx[ok], variant[ok]]
    placeholder = rng.random(n) < p_placeholder
    out[placeholder] = _pick(rng, _PLACEHOLDER_PHONES, int(placeholder.sum()))
    keep = ok & ~placeholder
    if part is not None:
        part.keys(rows[keep], _PHONE * _K + idx[keep])
    return out


def _write_id(rng, values: np.ndarray, kind: int, person: np.ndarray, part: _Part, rows, p_placeholder):
    """user_id / loyalty_id: as written (sometimes padded), occasionally a placeholder."""
    n = len(values)
    out = values.copy()
    ok = _present(values)
    pad = ok & (rng.random(n) < 0.03)
    out[pad] = np.char.add(values[pad].astype(str), " ").astype(object)
    placeholder = rng.random(n) < p_placeholder
    out[placeholder] = _pick(rng, _PLACEHOLDER_IDS, int(placeholder.sum()))
    keep = ok & ~placeholder
    part.keys(rows[keep], kind * _K + person[keep])
    return out


def _first_names(rng, w: _World, person: np.ndarray, p_nick, p_typo) -> np.ndarray:
    """Forenames as written: sometimes a nickname, a typo, odd case or spaces (rates per row or scalar)."""
    names = w.first[person].copy()
    nick = rng.random(len(person)) < p_nick
    r = rng.random(len(person))
    for i in np.flatnonzero(nick):
        options = NICKNAMES.get(names[i])
        if options:
            names[i] = options[int(r[i] * len(options))]
    return _messy_text(rng, names, p_typo)


def _postcode_text(rng, pc: np.ndarray) -> np.ndarray:
    k = rng.choice(6, size=len(pc), p=(0.55, 0.15, 0.12, 0.08, 0.05, 0.05))
    out = np.empty(len(pc), dtype=object)
    for i, (v, j) in enumerate(zip(pc, k, strict=True)):
        out[i] = (v, v.lower(), v.replace(" ", ""), v.replace(" ", "").lower(), " " + v, v.title())[j]
    return out


def _address_text(rng, w: _World, hh: np.ndarray, p_typo: float) -> tuple[np.ndarray, np.ndarray]:
    n = len(hh)
    style = rng.choice(5, size=n, p=(0.5, 0.2, 0.12, 0.1, 0.08))
    typo = rng.random(n) < p_typo
    r = rng.random(n)
    flat_in_line1 = rng.random(n) < 0.3
    line1 = np.empty(n, dtype=object)
    line2 = np.full(n, None, dtype=object)
    for i, h in enumerate(hh):
        num, st, sx = w.hh_street[h]
        street, suffix = _STREETS[st], _SUFFIXES[sx]
        if typo[i]:
            street = _typo(street, r[i])
        s = style[i]
        if s == 0:
            text = f"{num} {street} {suffix}"
        elif s == 1:
            text = f"{num} {street} {_ABBREV[suffix]}"
        elif s == 2:
            text = f"{num}, {street} {suffix}"
        elif s == 3:
            text = f"{num} {street} {_ABBREV[suffix]}.".lower()
        else:
            text = f"{num} {street} {suffix}".upper()
        flat = w.hh_flat[h]
        if flat is not None:
            if flat_in_line1[i]:
                text = f"{flat}, {text}"
            else:
                line2[i] = flat
        line1[i] = text
    return line1, line2


def _dob_text(rng, dob: np.ndarray, p_error: Any, p_missing: float) -> np.ndarray:
    """YYYY-MM-DD; some with day and month swapped or one digit wrong (always still a real date)."""
    n = len(dob)
    err = rng.random(n) < p_error
    kind = rng.integers(0, 3, n)
    delta = rng.choice([-10, -1, 1, 10], size=n)
    out = np.datetime_as_string(dob.astype("datetime64[D]"), unit="D").astype(object)
    for i in np.flatnonzero(err):
        y, m, d = out[i].split("-")
        if kind[i] == 0 and int(d) <= 12 and d != m:
            out[i] = f"{y}-{d}-{m}"
        elif kind[i] == 1:
            out[i] = f"{int(y) + (1 if delta[i] > 0 else -1)}-{m}-{d}"
        else:
            nd = int(d) + (1 if abs(delta[i]) == 1 else 10) * (1 if delta[i] > 0 else -1)
            if 1 <= nd <= 28:
                out[i] = f"{y}-{m}-{nd:02d}"
    out[rng.random(n) < p_missing] = None
    return out


def _crm(rng, w: _World, shared_ids: bool) -> _Part:
    """CRM contacts: ~1.2 per person (duplicates of the same person with drifting details)."""
    if shared_ids:
        counts = rng.choice([0, 1, 2, 3], size=w.n, p=[0.08, 0.68, 0.19, 0.05])
    else:
        counts = rng.choice([1, 2, 3, 4], size=w.n, p=[0.30, 0.38, 0.22, 0.10])
    person, rank = _segments(counts)
    n = len(person)
    dup = rank > 0
    crm_ids = ("CRM" + pd.Series(1_000_000 + rng.permutation(n)).astype(str)).values.astype(object)
    created = (np.datetime64("2016-01-01T00:00:00", "s") - WINDOW_START) / np.timedelta64(1, "s") + rng.integers(
        0, 10 * 365 * _DAY, n
    )
    created = created.astype(np.int64) + int(WINDOW_START.astype(np.int64))
    created = np.minimum(created, int(WINDOW_START.astype(np.int64)) - _DAY)
    created = created[np.lexsort((created, person))]  # a person's first contact (rank 0) is the oldest
    updated = created + rng.integers(0, 400 * _DAY, n)
    updated = np.minimum(updated, int(WINDOW_START.astype(np.int64)) + 70 * _DAY)
    part = _Part(pd.DataFrame(index=np.arange(n)), person, np.arange(n, dtype=np.int64), updated)
    rows = np.arange(n)

    old = (rank == 0) & _present(w.maiden[person])
    last = np.where(old, w.maiden[person], w.last[person])
    f = part.frame
    f["crm_id"] = crm_ids
    # Duplicates drift: about two in three duplicate pairs still agree on the whole name exactly.
    f["first_name"] = _first_names(rng, w, person, np.where(dup, 0.2, 0.06), np.where(dup, 0.06, 0.02))
    f["last_name"] = _messy_text(rng, last, np.where(dup, 0.07, 0.02))
    swapped = rng.random(n) < np.where(dup, 0.03, 0.005)  # forename keyed into the surname field
    f.loc[swapped, ["first_name", "last_name"]] = f.loc[swapped, ["last_name", "first_name"]].values
    dob_missing = 0.03 if not shared_ids else 0.12
    f["date_of_birth"] = _dob_text(rng, w.dob[person], np.where(dup, 0.2, 0.02), dob_missing)
    hh = w.household[person]
    line1, line2 = _address_text(rng, w, hh, 0.12 if not shared_ids else 0.05)
    no_addr = rng.random(n) < (0.02 if not shared_ids else 0.08)
    line1[no_addr], line2[no_addr] = None, None
    f["address_line1"], f["address_line2"] = line1, line2
    home_line1 = line1.copy()
    f["city"] = _messy_text(rng, w.hh_city[hh], 0.02)
    f.loc[rng.random(n) < 0.05, "city"] = None
    postcode = _postcode_text(rng, w.hh_postcode[hh])
    no_pc = (rng.random(n) < 0.04) & f["date_of_birth"].notna().values
    postcode[no_pc] = None
    # People move: the oldest of several contacts may hold a former address in the same postcode district.
    moved = np.flatnonzero((rank == 0) & (counts[person] > 1) & (rng.random(n) < 0.15))
    letters = "ABDEFGHJLNPQRSTUWXYZ"
    for i, (num, st, sx, r) in enumerate(
        zip(rng.integers(1, 200, len(moved)), rng.integers(0, len(_STREETS), len(moved)),
            rng.integers(0, len(_SUFFIXES), len(moved)), rng.integers(0, 4000, len(moved)), strict=True)
    ):  # fmt: skip
        row = moved[i]
        if line1[row] is not None:
            line1[row], line2[row] = f"{num} {_STREETS[st]} {_SUFFIXES[sx]}", None
        if postcode[row] is not None:
            outward = w.hh_postcode[hh[row]].split(" ")[0]
            postcode[row] = f"{outward} {r % 10}{letters[r // 10 % 20]}{letters[r // 200]}"
    f["postcode"] = postcode
    f["country"] = _pick(rng, np.array(["GB", "GB", "GB", "gb", " GB", None], dtype=object), n)

    if shared_ids:
        email_idx = _choose_email(rng, w, person, np.where(dup, 0.5, 0.1), 0.06)
        email_idx[old & (w.emails[person, 0] >= 0)] = w.emails[person[old & (w.emails[person, 0] >= 0)], 0]
        email_idx[rng.random(n) < 0.1] = -1
        f["email"] = _write_email(rng, w, email_idx, part, rows, 0.01)
        mob, land = w.mobile[person], w.hh_landline[hh]
        r = rng.random(n)
        phone_idx = np.where(r < 0.6, mob, np.where(r < 0.8, land, -1))
        phone_idx = np.where((phone_idx < 0) & (r < 0.8), np.maximum(mob, land), phone_idx)
        # a mobile mistyped in its network digit: a different number with the same last eight digits
        misdialled = np.flatnonzero((phone_idx >= 0) & (phone_idx == mob) & (rng.random(n) < 0.015))
        typed = phone_idx[misdialled]
        phone_idx[misdialled] = -1
        f["phone"] = _write_phone(rng, w, phone_idx, part, rows, 0.01)
        for row, idx in zip(misdialled, typed, strict=True):
            national = w.contacts.phones[idx]
            digit = "45789"[("45789".index(national[2]) + 1 + row % 4) % 5]
            f.at[row, "phone"] = _phone_variants(national[:2] + digit + national[3:])[0]
        lo = _where(rng.random(n) < 0.7, w.loyalty[person])
        f["loyalty_id"] = _write_id(rng, lo, _LOYALTY, person, part, rows, 0.005)
        us = _where(rng.random(n) < 0.55, w.user[person])
        f["user_id"] = _write_id(rng, us, _USER, person, part, rows, 0.005)
    else:
        # No shared identifiers: every value is unique to its record, or absent.
        has_e = rng.random(n) < 0.6
        local = [f"{_fold(a)}.{_fold(b)}.{r}" for a, b, r in zip(w.first[person], last, rows, strict=True)]
        f["email"] = _where(has_e, np.char.add(np.array(local, dtype=str), "@example.org").astype(object))
        has_p = rng.random(n) < 0.5
        codes = _unique_numbers(rng, n, 5 * 10**8)
        style = rng.choice(7, size=n, p=_PHONE_WEIGHTS)
        nationals = [f"07{'45789'[c // 10**8]}{c % 10**8:08d}" for c in codes]
        phones = [_phone_variants(x)[k] for x, k in zip(nationals, style, strict=True)]
        f["phone"] = _where(has_p, np.array(phones, dtype=object))
        part.e164 = _where(has_p, np.array(["+44" + x[1:] for x in nationals], dtype=object))
        f["loyalty_id"] = _where(rng.random(n) < 0.3, "LOY" + pd.Series(50_000_000 + rows).astype(str))
        f["user_id"] = _where(rng.random(n) < 0.3, "u" + pd.Series(5_000_000 + rows).astype(str))
    f["created_at"] = _iso(created, "", " ")
    f["updated_at"] = _iso(updated, "", " ")

    named = f["first_name"].notna().values & f["last_name"].notna().values
    # The true value behind what each row carries (typos, swaps and formats aside), None when absent.
    # A moved contact's former first address line is drawn into ``line1`` after the column was written
    # (the file carries the home line): compare what was written with the home address.
    written = f["address_line1"].to_numpy()
    home = "home " + pd.Series(hh).astype(str).to_numpy()
    address = np.where([x is None or x == h for x, h in zip(written, home_line1, strict=True)], home, written)
    true_postcode = w.hh_postcode[hh].copy()
    true_postcode[moved] = postcode[moved]
    _fuzzy_keys(
        part, rows[named], first=w.first[person[named]], surname=last[named],
        dob=_where(f["date_of_birth"].notna().values, np.datetime_as_string(w.dob[person], unit="D"))[named],
        postcode=_where(f["postcode"].notna().values, true_postcode)[named],
        address=_where(f["address_line1"].notna().values, address)[named],
    )  # fmt: skip
    return part


_FUZZY_PAIRS = tuple(itertools.combinations(range(4), 2))  # of (surname, dob, postcode, address)


def _fuzzy_keys(part: _Part, rows: np.ndarray, first, surname, dob, postcode, address) -> None:
    """Fuzzy evidence keys of named rows: two records of one person are evidence of each other when they
    agree on two of the full name, the date of birth, the postcode and the first address line.

    Arguments hold, per row, the person's first name and the true value behind the written one (typos,
    swaps, nicknames and formats aside) or None: the surname carried (a former one is another name), the
    date of birth, the postcode and the address (the home one, or a former one). A first name with one
    more attribute (a Rebecca at one postcode under two surnames) or a name alone is not evidence.
    Appends to ``part.fuzzy`` what each row's keys say; :func:`_connectable` makes them keys of the row's
    person.
    """
    first = np.asarray(first, dtype=object)
    attrs = tuple(np.asarray(a, dtype=object) for a in (surname, dob, postcode, address))
    for kind, (i, j) in enumerate(_FUZZY_PAIRS):
        both = _present(attrs[i]) & _present(attrs[j])
        says = f"{kind}|" + pd.Series(attrs[i][both]).astype(str) + "|" + pd.Series(attrs[j][both]).astype(str)
        part.fuzzy.append(pd.DataFrame({"row": rows[both], "says": says.to_numpy(), "first": first[both]}))


def _store(rng, w: _World) -> _Part:
    """Point-of-sale transactions: loyalty card, e-receipt email, phone, name + postcode, or anonymous."""
    counts = np.where(rng.random(w.n) < 0.35, 0, 1 + rng.poisson(1.15, w.n))
    person, _ = _segments(counts)
    n = len(person)
    rows = np.arange(n)
    seconds = int(WINDOW_START.astype(np.int64)) + rng.integers(0, _WINDOW, n)
    part = _Part(pd.DataFrame(index=rows), person, rows.astype(np.int64), seconds)
    f = part.frame
    f["transaction_id"] = ("TX" + pd.Series(10**9 + rng.permutation(n) * 7).astype(str)).values
    f["transaction_time"] = _iso(seconds, "", " ")
    f["store_id"] = "S" + pd.Series(rng.integers(1, 61, n)).astype(str).str.zfill(3).values

    has_loy = _present(w.loyalty[person])
    has_email = w.emails[person, 0] >= 0
    has_mob = w.mobile[person] >= 0
    r = rng.random(n)
    mode = np.full(n, 4)  # 0 loyalty, 1 email, 2 phone, 3 name+postcode, 4 anonymous
    mode[(r < 0.45) & has_loy] = 0
    rest = mode == 4
    r2 = rng.random(n)
    mode[rest & (r2 < 0.30) & has_email] = 1
    mode[(mode == 4) & (r2 >= 0.30) & (r2 < 0.48) & has_mob] = 2
    mode[(mode == 4) & (r2 >= 0.48) & (r2 < 0.80)] = 3

    lo = _where(mode == 0, w.loyalty[person])
    f["loyalty_id"] = _write_id(rng, lo, _LOYALTY, person, part, rows, 0.02)
    receipt = (mode == 1) | ((mode == 0) & (rng.random(n) < 0.2))
    email_idx = np.where(receipt, _choose_email(rng, w, person, 0.4, 0.05), -1)
    f["email"] = _write_email(rng, w, email_idx, part, rows, 0.02)
    phone_idx = np.where((mode == 2) | ((mode == 0) & (rng.random(n) < 0.1)), w.mobile[person], -1)
    f["phone"] = _write_phone(rng, w, phone_idx, part, rows, 0.01)
    named = (mode == 3) | ((mode == 0) & (rng.random(n) < 0.3))
    first = np.full(n, None, dtype=object)
    last = np.full(n, None, dtype=object)
    pc = np.full(n, None, dtype=object)
    idx = np.flatnonzero(named)
    first[idx] = _first_names(rng, w, person[idx], 0.2, 0.04)
    last[idx] = _messy_text(rng, w.last[person[idx]], 0.04)
    with_pc = idx[(mode[idx] == 3) | (rng.random(len(idx)) < 0.5)]
    pc[with_pc] = _postcode_text(rng, w.hh_postcode[w.household[person[with_pc]]])
    f["first_name"], f["last_name"], f["postcode"] = first, last, pc
    named_rows = rows[named]  # receipts carry the current surname and the home postcode
    none = np.full(len(named_rows), None, dtype=object)
    home_postcode = _where(_present(pc[named_rows]), w.hh_postcode[w.household[person[named_rows]]])
    _fuzzy_keys(part, named_rows, w.first[person[named_rows]], w.last[person[named_rows]], none, home_postcode, none)

    f["amount"] = np.round(np.exp(rng.normal(3.2, 0.9, n)), 2).clip(1, 2000).astype(str)
    f["currency"] = _pick(rng, np.array(["GBP", "GBP", "GBP", "gbp"], dtype=object), n)
    f["items"] = (1 + rng.poisson(1.5, n)).astype(str)
    return part


def _sequenced_times(rng, counts: np.ndarray, parents: np.ndarray, pos: np.ndarray) -> np.ndarray:
    gaps = (
        np.where(
            rng.random(len(pos)) < 0.6, rng.exponential(240, len(pos)), rng.exponential(3 * _DAY, len(pos))
        ).astype(np.int64)
        + 1
    )
    gaps[pos == 0] = 0
    cum = np.cumsum(gaps)
    first_row = np.cumsum(counts) - counts
    offset = cum - np.repeat(cum[first_row], counts)
    span = offset[np.cumsum(counts) - 1]  # each parent's total span
    latest_start = np.maximum(_WINDOW - 1 - span, 0)
    begin = (rng.random(len(counts)) * latest_start).astype(np.int64)
    t = np.minimum(begin[parents] + offset, _WINDOW - 1)
    return int(WINDOW_START.astype(np.int64)) + t


def _web(rng, w: _World) -> _Part:
    """Web events grouped by cookie; a cookie may log in (events before login carry only the cookie)."""
    n_cookies = rng.choice([0, 1, 2, 3], size=w.n, p=[0.15, 0.50, 0.25, 0.10])
    cookie_person, cookie_rank = _segments(n_cookies)
    c = len(cookie_person)
    counts = 1 + rng.poisson(3.3, c)
    cookie, pos = _segments(counts)
    person = cookie_person[cookie]
    n = len(cookie)
    rows = np.arange(n)
    seconds = _sequenced_times(rng, counts, cookie, pos)
    part = _Part(pd.DataFrame(index=rows), person, cookie.astype(np.int64), seconds)
    f = part.frame
    f["event_id"] = _hex_ids(rng, n)
    f["event_time"] = _iso(seconds)
    f["anonymous_id"] = _hex_ids(rng, c, 12, dashed=False)[cookie]

    has_user = _present(w.user[cookie_person])
    logs_in = has_user & (rng.random(c) < 0.6)
    login_pos = (rng.random(c) * counts).astype(np.int64)
    signs_up = logs_in & (cookie_rank == 0) & (rng.random(c) < 0.15)
    newsletter = ~logs_in & (w.emails[cookie_person, 0] >= 0) & (rng.random(c) < 0.12)
    news_pos = (rng.random(c) * counts).astype(np.int64)

    types = np.array(["page_view", "product_view", "add_to_cart", "checkout", "purchase"], dtype=object)
    etype = types[rng.choice(5, size=n, p=(0.55, 0.27, 0.09, 0.05, 0.04))]
    at_login = logs_in[cookie] & (pos == login_pos[cookie])
    etype[at_login] = np.where(signs_up[cookie][at_login], "sign_up", "login")
    at_news = newsletter[cookie] & (pos == news_pos[cookie])
    etype[at_news] = "newsletter_signup"
    f["event_type"] = etype

    logged = logs_in[cookie] & (pos >= login_pos[cookie])
    keep_id = logged & (rng.random(n) < 0.97)  # the odd tag fires without the user id
    f["user_id"] = _write_id(rng, _where(keep_id, w.user[person]), _USER, person, part, rows, 0.004)
    wants_email = at_news | (at_login & (rng.random(n) < 0.45)) | (logged & (etype == "purchase"))
    email_idx = np.where(wants_email, _choose_email(rng, w, person, 0.5), -1)
    f["email"] = _write_email(rng, w, email_idx, part, rows, 0.005)

    paths = np.empty(n, dtype=object)
    pid = rng.integers(10_000, 99_999, n)
    pick = rng.integers(0, 8, n)
    for t, options in _PAGES.items():
        sel = np.flatnonzero(etype == t)
        if t == "product_view":
            paths[sel] = np.char.add("/p/", pid[sel].astype(str)).astype(object)
        else:
            paths[sel] = np.asarray(options, dtype=object)[pick[sel] % len(options)]
    f["page_url"] = "https://www.northwind-shop.co.uk" + pd.Series(paths)
    buy = etype == "purchase"
    order = np.full(n, None, dtype=object)
    order[buy] = ("W" + pd.Series(10**8 + rng.permutation(int(buy.sum()))).astype(str)).values
    f["order_id"] = order
    revenue = np.round(np.exp(rng.normal(3.6, 0.7, n)), 2).clip(3, 3000).astype(str).astype(object)
    f["revenue"] = _where(buy, revenue)
    f["currency"] = _where(buy, "GBP")
    utm = (pos == 0) & (rng.random(n) < 0.4)
    which = rng.integers(0, len(_UTM), n)
    for j, col in enumerate(("utm_source", "utm_medium", "utm_campaign")):
        vals = np.array([u[j] or None for u in _UTM], dtype=object)[which]
        f[col] = _where(utm, vals)
    return part


def _app(rng, w: _World) -> _Part:
    """App events grouped by device: opens, logins (with email or phone), purchases, push opt-in/out."""
    n_dev = np.where(rng.random(w.n) < 0.33, 1 + (rng.random(w.n) < 0.2), 0)
    dev_person, _ = _segments(n_dev)
    d = len(dev_person)
    counts = 1 + rng.poisson(4.2, d)
    device, pos = _segments(counts)
    person = dev_person[device]
    n = len(device)
    rows = np.arange(n)
    seconds = _sequenced_times(rng, counts, device, pos)
    part = _Part(pd.DataFrame(index=rows), person, device.astype(np.int64), seconds)
    f = part.frame
    f["event_id"] = _hex_ids(rng, n)
    f["event_time"] = _iso(seconds, "+00:00")
    ios = rng.random(d) < 0.55
    ids = np.where(ios, _hex_ids(rng, d, upper=True), _hex_ids(rng, d, 8, dashed=False))
    f["device_id"] = ids[device]

    has_user = _present(w.user[dev_person])
    logs_in = has_user & (rng.random(d) < 0.85)
    login_pos = np.minimum(rng.geometric(0.35, d) - 1, counts - 1)
    opt_in = rng.random(d) < 0.45
    opt_in_pos = np.minimum(rng.geometric(0.5, d), counts - 1)
    opt_out = opt_in & (counts >= 4) & (rng.random(d) < 0.25)

    types = np.array(["app_open", "product_view", "add_to_cart", "purchase"], dtype=object)
    etype = types[rng.choice(4, size=n, p=(0.5, 0.33, 0.1, 0.07))]
    at_in = opt_in[device] & (pos == opt_in_pos[device])
    etype[at_in] = "push_opt_in"
    at_out = opt_out[device] & (pos == counts[device] - 1) & ~at_in
    etype[at_out] = "push_opt_out"
    at_login = logs_in[device] & (pos == login_pos[device])
    etype[at_login] = "login"
    f["event_type"] = etype

    logged = logs_in[device] & (pos >= login_pos[device])
    f["user_id"] = _write_id(rng, _where(logged, w.user[person]), _USER, person, part, rows, 0.004)
    r = rng.random(n)
    email_idx = np.where(at_login & (r < 0.5), _choose_email(rng, w, person, 0.3), -1)
    f["email"] = _write_email(rng, w, email_idx, part, rows, 0.005)
    phone_idx = np.where(at_login & (r > 0.7), w.mobile[person], -1)
    f["phone"] = _write_phone(rng, w, phone_idx, part, rows, 0.005)
    f["platform"] = np.where(ios, "ios", "android")[device]
    version = np.array(["5.11.2", "5.12.0", "5.12.1", "6.0.0"], dtype=object)
    f["app_version"] = version[np.minimum(rng.integers(0, 3, d)[device] + (pos > 5), 3)]
    buy = etype == "purchase"
    order = np.full(n, None, dtype=object)
    order[buy] = ("A" + pd.Series(10**8 + rng.permutation(int(buy.sum()))).astype(str)).values
    f["order_id"] = order
    revenue = np.round(np.exp(rng.normal(3.5, 0.7, n)), 2).clip(3, 3000).astype(str).astype(object)
    f["revenue"] = _where(buy, revenue)
    f["currency"] = _where(buy, "GBP")
    return part


# ---------------------------------------------------------------------------------------------------------
# Consent: events through the identifiers a person has shown somewhere in the records

# channel: (source, subject column, purpose weights over PURPOSES)
_CHANNELS = (
    ("web_banner", "email", (0.70, 0, 0, 0.10, 0.10, 0.10)),
    ("web_banner", "anonymous_id", (0, 0, 0, 0.45, 0.55, 0)),
    ("store_form", "phone", (0.40, 0.60, 0, 0, 0, 0)),
    ("crm", "crm_id", (0.45, 0.25, 0, 0.10, 0, 0.20)),
    ("app_prompt", "device_id", (0, 0, 0.85, 0, 0.15, 0)),
    ("preference_centre", "user_id", (0.30, 0.15, 0.10, 0.15, 0.10, 0.20)),
    ("store_form", "loyalty_id", (0.50, 0.50, 0, 0, 0, 0)),
)
_CHANNEL_WEIGHTS = np.array((0.25, 0.20, 0.12, 0.15, 0.12, 0.10, 0.06))


def _weighted_rows(rng, weights: np.ndarray) -> np.ndarray:
    """One column index per row of a non-negative weight matrix (rows must have a positive sum)."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return (cum < u[:, None]).sum(axis=1)


def _first_per_person(n: int, person: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(n, None, dtype=object)
    first = np.unique(person, return_index=True)
    out[first[0][::-1]] = values[first[1][::-1]]
    return out


def _consent(rng, w: _World, parts: dict[str, _Part], keys: pd.DataFrame):
    n = w.n
    seen = keys[["person", "key"]].drop_duplicates()
    kind, value = seen["key"].values // _K, seen["key"].values % _K
    sp = seen["person"].values
    own_email = (kind == _EMAIL) & ((value == w.emails[sp, 0]) | (value == w.emails[sp, 1]))
    email = np.full(n, -1, dtype=np.int64)
    email[sp[own_email][::-1]] = value[own_email][::-1]
    own_mobile = (kind == _PHONE) & (value == w.mobile[sp])
    mobile = np.full(n, -1, dtype=np.int64)
    mobile[sp[own_mobile]] = value[own_mobile]
    user_seen = np.zeros(n, dtype=bool)
    user_seen[sp[kind == _USER]] = True
    loyalty_seen = np.zeros(n, dtype=bool)
    loyalty_seen[sp[kind == _LOYALTY]] = True
    crm = _first_per_person(n, parts["crm"].person, parts["crm"].frame["crm_id"].values)
    cookie = _first_per_person(n, parts["web"].person, parts["web"].frame["anonymous_id"].values)
    device = _first_per_person(n, parts["app"].person, parts["app"].frame["device_id"].values)
    avail = np.stack(
        [email >= 0, _present(cookie), mobile >= 0, _present(crm), _present(device), user_seen, loyalty_seen], axis=1
    )

    counts = np.where(avail.any(axis=1), rng.poisson(2.5, n), 0)
    person, _ = _segments(counts)
    m = len(person)
    channel = _weighted_rows(rng, avail[person] * _CHANNEL_WEIGHTS)
    purpose_w = np.array([c[2] for c in _CHANNELS])[channel]
    purpose = _weighted_rows(rng, purpose_w)
    seconds = int(WINDOW_START.astype(np.int64)) + rng.integers(0, _WINDOW, m)

    # The story of a withdrawal at the till: email marketing granted in the CRM (with the email), later
    # withdrawn at a store with only the phone number.
    story = np.flatnonzero(avail[:, 3] & avail[:, 2] & (email >= 0) & (rng.random(n) < 0.05))
    drop = np.isin(person, story) & (purpose == 0)
    person, channel, purpose, seconds = person[~drop], channel[~drop], purpose[~drop], seconds[~drop]
    order = np.lexsort((seconds, purpose, person))
    person, channel, purpose, seconds = person[order], channel[order], purpose[order], seconds[order]
    group_start = np.r_[True, (person[1:] != person[:-1]) | (purpose[1:] != purpose[:-1])][: len(person)]
    first_of_group = group_start
    r = rng.random(len(person))
    granted = np.where(first_of_group, r < 0.9, r < 0.5)
    k = len(story)
    start = int(WINDOW_START.astype(np.int64))
    person = np.r_[person, story, story]
    channel = np.r_[channel, np.full(k, 3), np.full(k, 2)]
    purpose = np.r_[purpose, np.zeros(2 * k, dtype=np.int64)]
    seconds = np.r_[
        seconds,
        start + rng.integers(0, int(_WINDOW * 0.4), k),
        start + rng.integers(int(_WINDOW * 0.6), _WINDOW, k),
    ]
    granted = np.r_[granted, np.ones(k, dtype=bool), np.zeros(k, dtype=bool)]
    m = len(person)
    # One person's events for one purpose never share a second: the latest is well defined.
    order = np.lexsort((seconds, purpose, person))
    person, channel, purpose, seconds, granted = (
        person[order], channel[order], purpose[order], seconds[order], granted[order]
    )  # fmt: skip
    group_start = np.r_[True, (person[1:] != person[:-1]) | (purpose[1:] != purpose[:-1])][: len(person)]
    starts = np.flatnonzero(group_start)
    cc = np.arange(m) - np.repeat(starts, np.diff(np.r_[starts, m]))
    seconds = seconds + cc
    story_pair = np.zeros(m, dtype=bool)
    story_pair[np.isin(person, story) & (purpose == 0)] = True

    f = pd.DataFrame(index=np.arange(m))
    f["consent_id"] = _hex_ids(rng, m)
    f["event_time"] = _iso(seconds)
    f["purpose"] = np.asarray(PURPOSES, dtype=object)[purpose]
    f["status"] = np.where(granted, "granted", "withdrawn")
    f["source"] = np.array([c[0] for c in _CHANNELS], dtype=object)[channel]
    f["policy_version"] = np.where(seconds < start + 45 * _DAY, "2025.1", "2026.2")
    subject = np.array([c[1] for c in _CHANNELS], dtype=object)[channel]
    extra = rng.random(m)
    with_email = (subject == "email") | (((subject == "crm_id") | (subject == "user_id")) & (extra < 0.3))
    with_email &= email[person] >= 0
    with_email |= story_pair & (subject == "crm_id")
    f["email"] = _write_email(rng, w, np.where(with_email, email[person], -1), None, np.arange(m), 0.0)
    f["phone"] = _write_phone(rng, w, np.where(subject == "phone", mobile[person], -1), None, np.arange(m), 0)
    f["user_id"] = _where(subject == "user_id", w.user[person])
    f["crm_id"] = _where(subject == "crm_id", crm[person])
    f["loyalty_id"] = _where(subject == "loyalty_id", w.loyalty[person])
    f["device_id"] = _where(subject == "device_id", device[person])
    with_cookie = (subject == "anonymous_id") | ((subject == "email") & (extra > 0.7) & _present(cookie[person]))
    f["anonymous_id"] = _where(with_cookie, cookie[person])
    return _Part(f, person, np.zeros(m, dtype=np.int64), seconds), purpose, granted


def _unreadable_consent(frame: pd.DataFrame) -> int:
    """The events of ``frame`` no one can be found by: a grant whose only identifier is an email that does not
    read as an address (a mistyped ``@@``). Ingestion quarantines them ("no readable subject identifier"); a
    withdrawal so written is kept, since its subject is still reached by the email's loose key."""
    from cdp.ingest import CONSENT_SUBJECT_COLUMNS
    from identity.standardise import normalise_email

    others = [c for c in CONSENT_SUBJECT_COLUMNS if c != "email"]
    alone = frame[others].isna().all(axis=1) & frame["email"].notna() & (frame["status"] != "withdrawn")
    return int(sum(normalise_email(email) is None for email in frame.loc[alone, "email"]))


# ---------------------------------------------------------------------------------------------------------
# Malformed rows and CRM re-exports


def _malformed(rng, source: str, part: _Part, rate: float = 0.002) -> tuple[pd.DataFrame, np.ndarray]:
    """Copies of some rows with one required value emptied or made unparseable (ingestion quarantines)."""
    n = len(part.frame)
    m = min(n, max(1, round(rate * n))) if n else 0
    idx = np.sort(rng.choice(n, size=m, replace=False)) if m else np.zeros(0, dtype=np.int64)
    bad = part.frame.iloc[idx].copy().reset_index(drop=True)
    key = KEY[source]
    if source == "store":
        bad[key] = ("TXQ" + pd.Series(10**6 + np.arange(m)).astype(str)).values
    elif source != "crm":
        bad[key] = _hex_ids(rng, m)
    required = REQUIRED[source]
    time_col = {"web": "event_time", "app": "event_time", "store": "transaction_time", "consent": "event_time"}
    kinds = [("empty", c) for c in required] + ([("junk", time_col[source])] if source in time_col else [])
    pick = rng.integers(0, len(kinds), m)
    junk = rng.integers(0, len(_JUNK_TIMES), m)
    for i in range(m):
        how, col = kinds[pick[i]]
        bad.at[i, col] = None if how == "empty" else _JUNK_TIMES[junk[i]]
    return bad, part.seconds[idx]


def _reexports(rng, part: _Part) -> tuple[pd.DataFrame, np.ndarray]:
    """A few CRM contacts exported again later with their city retyped: same key, newer updated_at."""
    n = len(part.frame)
    idx = np.flatnonzero(rng.random(n) < 0.03)
    again = part.frame.iloc[idx].copy().reset_index(drop=True)
    seconds = int(WINDOW_START.astype(np.int64)) + rng.integers(80 * _DAY, _WINDOW - 1, len(idx))
    again["updated_at"] = _iso(seconds, "", " ")
    again["city"] = again["city"].str.upper()
    return again, seconds


# ---------------------------------------------------------------------------------------------------------
# Writing


def _file_format(source: str, i: int, count: int) -> str:
    if source == "web" and i == count // 2:
        return "parquet"
    if source == "app" and i == count // 2:
        return "jsonl"
    if source == "consent" and count > 1 and i == count - 1:
        return "jsonl"
    return "csv"


def _write_batches(folder: Path, source: str, frame: pd.DataFrame, seconds: np.ndarray, count: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    count = max(1, min(count, len(frame)))  # never an empty batch (an empty JSON Lines file has no columns)
    order = np.argsort(seconds, kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    chunks = np.array_split(np.arange(len(frame)), count)
    days = (WINDOW_END - WINDOW_START).astype("timedelta64[D]").astype(int)
    for i, rows in enumerate(chunks):
        day = WINDOW_START.astype("datetime64[D]") + int(round((i + 1) * days / count))
        name = f"{source}-{day}" if count <= days else f"{source}-{day}-{i:04d}"
        batch = frame.iloc[rows]
        if i == (count - 1 if source == "store" else 0) and source in _EXTRA_COLUMN:
            batch = batch.assign(**{_EXTRA_COLUMN[source]: _extra_values(source, rows)})
        fmt = _file_format(source, i, count) if len(batch) else "csv"  # an empty JSON Lines file has no header
        path = folder / f"{name}.{fmt}"
        if fmt == "csv" and source == "crm":  # quoted only where needed, like most CRM exports
            batch.to_csv(path, index=False, lineterminator="\n")
        elif fmt == "csv":  # every value quoted, like other exporters; much faster for the big sources
            _arrow_csv(batch, path)
        elif fmt == "jsonl":
            batch.to_json(path, orient="records", lines=True, force_ascii=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(batch.astype(object), preserve_index=False)
            table = table.cast(pa.schema([pa.field(c, pa.string()) for c in batch.columns]))
            pq.write_table(table, path, compression="zstd")
    return len(chunks)


def _extra_values(source: str, rows: np.ndarray) -> np.ndarray:
    """Values of the one non-contract column a source's batch carries (a browser, a till, a system name)."""
    if source == "web":
        return np.asarray(_USER_AGENTS, dtype=object)[rows % len(_USER_AGENTS)]
    if source == "store":
        return ("T" + pd.Series(rows % 9 + 1).astype(str)).values
    return np.full(len(rows), "crm-eu-1", dtype=object)


def _arrow_csv(frame: pd.DataFrame, path: Path, quoting: str = "needed") -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pa.Table.from_pandas(frame.astype(object), preserve_index=False)
    table = table.cast(pa.schema([pa.field(c, pa.string()) for c in frame.columns]))
    if quoting == "none":  # pyarrow quotes the header row anyway: write it plain ourselves
        with path.open("wb") as fh:
            fh.write((",".join(frame.columns) + "\n").encode())
            pacsv.write_csv(table, fh, pacsv.WriteOptions(quoting_style=quoting, include_header=False))
    else:
        pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style=quoting))


def _people_frame(w: _World, crm: _Part | None) -> pd.DataFrame:
    ids = _person_ids(w.n)
    # a trailing None, so that index -1 (no such email or phone) reads as missing
    all_emails = np.array([*w.contacts.emails, None], dtype=object)
    all_phones = np.array([*("+44" + p[1:] for p in w.contacts.phones), None], dtype=object)
    family, landline = w.hh_family_email[w.household], w.hh_landline[w.household]
    emails = _joined([all_emails[i] for i in (w.emails[:, 0], w.emails[:, 1], family)])
    phones = _joined([all_phones[i] for i in (w.mobile, landline)])
    out = pd.DataFrame(
        {
            "person_id": ids,
            "first_name": w.first,
            "last_name": w.last,
            "emails": emails,
            "phones": phones,
            "date_of_birth": np.datetime_as_string(w.dob, unit="D"),
            "postcode": w.hh_postcode[w.household],
            "household_id": pd.Series(w.household + 1).map(lambda h: f"H{h:07d}").values,
        }
    )
    if crm is not None:  # no_shared_ids: the only emails and phones are the per-record ones
        per = pd.DataFrame({"p": crm.person, "e": crm.frame["email"].values, "t": crm.e164})
        for column, values in (("emails", "e"), ("phones", "t")):
            present = per.dropna(subset=[values])
            nth = present.groupby("p").cumcount().values
            parts = []
            for k in range(int(nth.max()) + 1 if len(nth) else 0):
                part = np.full(w.n, None, dtype=object)
                part[present["p"].values[nth == k]] = present[values].values[nth == k]
                parts.append(part)
            out[column] = _joined(parts) if parts else ""
    return out


def _joined(columns: list[np.ndarray]) -> np.ndarray:
    """Row-wise ';'-join of object columns, skipping missing values."""
    out = np.full(len(columns[0]), "", dtype=object)
    for column in columns:
        has = pd.notna(column)
        out = out + np.where((out != "") & has, ";", "") + np.where(has, column, "")
    return out


def _person_ids(n: int) -> np.ndarray:
    return ("P" + pd.Series(np.arange(1, n + 1)).astype(str).str.zfill(7)).values


# ---------------------------------------------------------------------------------------------------------
# Ground truth


def _connectable(parts: dict[str, _Part]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The (person, unit, key) evidence table, and per source each row's unit's evidence group.

    A unit's evidence group is the connected component of its person's units under the evidence keys,
    transitively: a cookie and a CRM contact that share an email, and that contact and a receipt that
    share a loyalty card, are one group. Two units of one person in different groups share no evidence,
    directly or through other units, so nothing in the data can link them. Keys are per unit (a
    cookie's or device's keys are those of all its events). Per source: a frame with a row per record,
    ``group`` (numbered 1, 2, ... within the person by the group's smallest unit code, so one seed writes
    the same labels) and ``size`` (units in the group; a unit is connectable when it is 2 or more).
    """
    frames, units = [], {}
    for number, source in enumerate(RECORD_SOURCES, start=1):
        if source not in parts:
            continue
        p = parts[source]
        units[source] = number * 10**10 + p.unit
        if p.key_rows:
            rows = np.concatenate(p.key_rows)
            frames.append(
                pd.DataFrame(
                    {"person": p.person[rows], "unit": units[source][rows], "key": np.concatenate(p.key_codes)}
                )
            )
    fuzzy = [
        f.assign(person=parts[source].person[f["row"]], unit=units[source][f["row"]])
        for source in units
        for f in parts[source].fuzzy
    ]
    if fuzzy:
        said = pd.concat(fuzzy, ignore_index=True)
        said["key"] = _FUZZY * _K + pd.MultiIndex.from_frame(said[["person", "says"]]).factorize()[0]
        frames.append(said[~_ambiguous(said)][["person", "unit", "key"]])
    keys = pd.concat(frames, ignore_index=True).drop_duplicates()
    every_unit = pd.concat(
        [pd.DataFrame({"person": parts[source].person, "unit": codes}) for source, codes in units.items()],
        ignore_index=True,
    ).drop_duplicates("unit")
    groups = _evidence_groups(every_unit, _evidence_keys(keys))
    return keys, {
        source: groups.iloc[groups.index.get_indexer(codes)].reset_index(drop=True) for source, codes in units.items()
    }


def _ambiguous(said: pd.DataFrame) -> np.ndarray:
    """Per fuzzy key row: whether another person whose first name could be written the same way (the same
    name, or one nickname for both: Chris for Christopher and Christine) has a key that says the same
    (two Robert Chapmans at one postcode): then it cannot tell whose record it is."""
    people = said[["says", "person", "first"]].drop_duplicates(["says", "person"])
    people = people[people.groupby("says")["person"].transform("size").to_numpy() > 1]
    pairs = people.merge(people, on="says", suffixes=("", "_other"))
    pairs = pairs[pairs["person"] != pairs["person_other"]]
    names = pd.unique(pairs["first"])
    forms = {name: {name, *NICKNAMES.get(name, ())} for name in names}
    alike = pd.DataFrame(
        [(a, b) for a in names for b in names if forms[a] & forms[b]], columns=["first", "first_other"]
    )
    unclear = pairs.merge(alike, on=["first", "first_other"])[["person", "says"]].drop_duplicates()
    return said.merge(unclear.assign(unclear=True), on=["person", "says"], how="left")["unclear"].eq(True).to_numpy()


def _evidence_keys(keys: pd.DataFrame) -> pd.DataFrame:
    """The rows of the (person, unit, key) table that are evidence the platform can see.

    Placeholders and mistyped addresses never became keys. A key value that units of several people
    carry (a household landline or a family email that two members wrote) is left out too: on its own it
    cannot tell whose unit it is (a unit that carries a name beside it may still be joined by fuzzy
    evidence). Fuzzy keys are per person: :func:`_ambiguous` has dropped the ones that cannot tell two
    people apart.
    """
    people_per_key = keys.groupby("key")["person"].transform("nunique").to_numpy()
    return keys[people_per_key == 1]


def _evidence_groups(every_unit: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """``group`` (number within the person) and ``size`` of each unit's evidence group, indexed by unit code.

    Components of the bipartite graph of units and key values (every evidence key belongs to one person,
    so a component never spans two people).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_units = len(every_unit)
    values, value_node = np.unique(evidence["key"].to_numpy(), return_inverse=True)
    left = pd.Index(every_unit["unit"].to_numpy()).get_indexer(evidence["unit"].to_numpy())
    right = n_units + value_node
    n = n_units + len(values)
    _, labels = connected_components(coo_matrix((np.ones(len(left)), (left, right)), shape=(n, n)), directed=False)
    frame = every_unit.assign(component=labels[:n_units])
    by_component = frame.groupby("component")["unit"]
    frame["first"] = by_component.transform("min")
    frame["size"] = by_component.transform("size")
    frame["group"] = frame.groupby("person")["first"].rank(method="dense").astype(np.int64)
    return frame.set_index("unit")[["group", "size"]]


def _consent_truth(
    consent: _Part, purpose: np.ndarray, granted: np.ndarray, app: _Part, person_ids: np.ndarray
) -> pd.DataFrame:
    """Each person's latest consent per purpose, over the consent events and the app's push opt-in/out
    events (push_marketing consent too: the consent ledger reads them)."""
    push = app.frame["event_type"].isin(["push_opt_in", "push_opt_out"]).values
    person = np.r_[consent.person, app.person[push]]
    purposes = np.r_[purpose, np.full(int(push.sum()), PURPOSES.index("push_marketing"))]
    seconds = np.r_[consent.seconds, app.seconds[push]]
    status = np.r_[granted, app.frame["event_type"].values[push] == "push_opt_in"]
    order = np.lexsort((seconds, purposes, person))
    person, purposes, seconds, status = person[order], purposes[order], seconds[order], status[order]
    last = np.r_[(person[1:] != person[:-1]) | (purposes[1:] != purposes[:-1]), True][: len(person)]
    return pd.DataFrame(
        {
            "person_id": person_ids[person[last]],
            "purpose": np.asarray(PURPOSES, dtype=object)[purposes[last]],
            "status": np.where(status[last], "granted", "withdrawn"),
            "event_time": _iso(seconds[last]),
        }
    )


# ---------------------------------------------------------------------------------------------------------
# The public function


def generate_world(
    out: Path,
    customers: int,
    seed: int = 7,
    mode: str = "omnichannel",
    region: str = "GB",
    files_per_source: int | None = None,
) -> GenerateSummary:
    """Write a synthetic inbox to ``out`` and its ground truth to ``<out>-truth``; return what was written.

    ``mode="omnichannel"`` writes web, app, store, CRM and consent batches (about 12 rows per customer);
    ``mode="no_shared_ids"`` writes only CRM contacts (about 2 per customer) that share no identifier, so
    that only names, dates of birth and addresses can link them. Files in ``out/<source>/`` named like the
    generated ones (``<source>-*.csv|parquet|jsonl``) are replaced.
    """
    started = time.perf_counter()
    if mode not in MODES:
        raise CdpError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if region.upper() != "GB":
        raise CdpError(f"region {region!r} is not supported by the generator: it writes GB phone numbers")
    if customers < 1:
        raise CdpError(f"--customers must be at least 1, got {customers}")
    if files_per_source is not None and files_per_source < 1:
        raise CdpError(f"files per source must be at least 1, got {files_per_source}")
    out = Path(out)
    if not out.name or out.name == "..":  # "--out ''" arrives as ".": the inbox would land in the working folder
        raise CdpError(f"--out {str(out)!r}: name the inbox folder to write (its ground truth goes to OUT-truth)")
    truth = Path(str(out) + "-truth")
    for folder, what in ((out, "inbox"), (truth, "ground truth")):  # before anything is written
        check_output_folder(folder, what)
    rng = np.random.default_rng(seed)
    for source in COLUMNS:  # batches of an earlier run (of any mode) would mix with this world
        for old in (out / source).glob(f"{source}-*"):
            if old.suffix in (".csv", ".parquet", ".jsonl"):
                old.unlink()

    w = _people(rng, customers)
    shared = mode == "omnichannel"
    parts: dict[str, _Part] = {"crm": _crm(rng, w, shared)}
    if shared:
        parts["store"] = _store(rng, w)
        parts["web"] = _web(rng, w)
        parts["app"] = _app(rng, w)

    keys, groups = _connectable(parts)
    summary = GenerateSummary(out, truth, mode, seed, customers, int(w.household.max()) + 1)
    count = files_per_source
    truth.mkdir(parents=True, exist_ok=True)
    person_ids = _person_ids(customers)
    records = []
    for source in RECORD_SOURCES:
        if source not in parts:
            continue
        p = parts[source]
        frame = p.frame.reindex(columns=list(COLUMNS[source]))
        bad, bad_seconds = _malformed(rng, source, p)
        pieces, secs = [frame, bad], [p.seconds, bad_seconds]
        if source == "crm" and shared:
            again, again_seconds = _reexports(rng, p)
            pieces.append(again)
            secs.append(again_seconds)
        full = pd.concat(pieces, ignore_index=True)
        summary.files[source] = _write_batches(
            out / source, source, full, np.concatenate(secs), count or _DEFAULT_FILES[source]
        )
        summary.rows[source] = len(full)
        summary.malformed[source] = len(bad)
        summary.records[source] = len(frame)
        records.append(
            pd.DataFrame(
                {
                    "source": source,
                    "source_record_id": frame[KEY[source]].values,
                    "unit_id": source + ":" + frame[UNIT[source]].astype(str).values,
                    "person_id": person_ids[p.person],
                    "connectable": np.where(groups[source]["size"].to_numpy() >= 2, "true", "false"),
                    "evidence_group": person_ids[p.person] + "/" + groups[source]["group"].astype(str).to_numpy(),
                }
            )
        )
    # truth values never hold a comma or a quote: written plain (pyarrow refuses if one ever does)
    _arrow_csv(pd.concat(records, ignore_index=True), truth / "records.csv", quoting="none")

    consent_truth = pd.DataFrame(columns=["person_id", "purpose", "status", "event_time"])
    consent_events = pd.DataFrame(columns=["consent_id", "person_id"])
    if shared:
        consent, purpose, granted = _consent(rng, w, parts, keys)
        bad, bad_seconds = _malformed(rng, "consent", consent)
        full = pd.concat([consent.frame, bad], ignore_index=True)
        summary.files["consent"] = _write_batches(
            out / "consent", "consent", full, np.r_[consent.seconds, bad_seconds],
            count or _DEFAULT_FILES["consent"],
        )  # fmt: skip
        summary.rows["consent"] = len(full)
        summary.malformed["consent"] = len(bad)
        summary.unreadable["consent"] = _unreadable_consent(consent.frame)
        summary.consent_events = len(consent.frame)
        consent_truth = _consent_truth(consent, purpose, granted, parts["app"], person_ids)
        consent_events = pd.DataFrame(
            {"consent_id": consent.frame["consent_id"].values, "person_id": person_ids[consent.person]}
        )
    consent_truth.to_csv(truth / "consent.csv", index=False, lineterminator="\n")
    consent_events.to_csv(truth / "consent_events.csv", index=False, lineterminator="\n")
    _people_frame(w, None if shared else parts["crm"]).to_csv(truth / "people.csv", index=False, lineterminator="\n")
    summary.seconds = time.perf_counter() - started
    return summary


def split_inbox(inbox: Path, base: Path, batch: Path, fraction: float) -> dict[str, int]:
    """Copy ``inbox`` to ``base`` without the newest ``fraction`` of every source's rows, which go to one
    new file per source in ``batch``. Lines are moved whole from the end of each source's latest file
    (CSV keeps its header in both). Returns the rows held back per source."""
    held: dict[str, int] = {}
    for source in ("web", "app", "store", "crm", "consent"):
        files = sorted((inbox / source).iterdir())
        (base / source).mkdir(parents=True, exist_ok=True)
        (batch / source).mkdir(parents=True, exist_ok=True)
        for f in files[:-1]:
            shutil.copyfile(f, base / source / f.name)
        last = files[-1]
        if last.suffix not in (".csv", ".jsonl"):
            raise ValueError(f"{last}: only CSV and JSON Lines files can be split")
        total = sum(_rows(f) for f in files if f.suffix in (".csv", ".jsonl"))
        lines = last.read_text(encoding="utf-8").splitlines(keepends=True)
        header = lines[:1] if last.suffix == ".csv" else []
        body = lines[len(header) :]
        k = min(len(body) - 1, max(1, round(fraction * total)))
        (base / source / last.name).write_text("".join(header + body[:-k]), encoding="utf-8")
        (batch / source / f"{source}-new-batch{last.suffix}").write_text("".join(header + body[-k:]), encoding="utf-8")
        held[source] = k
    return held


def _rows(path: Path) -> int:
    with path.open("rb") as handle:
        n = sum(1 for _ in handle)
    return n - 1 if path.suffix == ".csv" else n
