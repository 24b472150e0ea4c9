"""Standardisers: real-world spellings of emails, phones, names and postcodes, and SQL/Python agreement.

Does not touch the store beyond an in-memory DuckDB used to run the SQL forms.
"""

import duckdb
import pytest

from identity.standardise import (
    WHITESPACE,
    email_addresses,
    email_functions,
    email_match_key,
    normalise_email,
    normalise_name,
    normalise_phone,
    normalise_postcode,
    sql_email_count,
    sql_email_match_key,
    sql_normalise_email,
    sql_normalise_name,
    sql_normalise_postcode,
    sql_trim_id,
)

PHONES = [
    ("07700 900123", "+447700900123"),
    ("07700900123", "+447700900123"),
    ("+44 7700 900123", "+447700900123"),
    ("+44 (0)7700 900123", "+447700900123"),
    ("0044 7700 900 123", "+447700900123"),
    ("(020) 7946 0123", "+442079460123"),
    ("020-7946-0123", "+442079460123"),
    ("+1 (415) 555-2671", "+14155552671"),
    ("+33 1 42 68 53 00", "+33142685300"),
    (" 7700 900123 ", "+447700900123"),
    ("0000000000", None),
    ("0123456789", None),  # digits typed in order, or a number ending in six zeros: nobody's
    ("01234 567890", None),
    ("07000 000000", None),
    ("+7 912 345 67 89", "+79123456789"),  # holds "123456789", and is a real Russian mobile
    # A note after the number: phonenumbers read its letters as keypad digits (an impossible number).
    ("+44 7700 900123 (mobile)", "+447700900123"),
    ("07700 900123 mob", "+447700900123"),
    ("07700 900123 - home.", "+447700900123"),
    ("+44 7700 900123 ext. 12", "+447700900123"),  # an extension stays an extension
    ("mobile", None),
    ("-1", None),
    ("n/a", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("raw", "expected"), PHONES)
def test_phone_spellings_become_e164(raw, expected):
    assert normalise_phone(raw, "GB") == expected


def test_phone_default_region_is_configurable():
    assert normalise_phone("(415) 555-2671", "US") == "+14155552671"
    assert normalise_phone("01 42 68 53 00", "FR") == "+33142685300"


EMAILS = [
    ("  Alice.Smith@Example.COM ", "alice.smith@example.com", "alice.smith@example.com"),
    ("alice.smith+newsletter@example.com", "alice.smith+newsletter@example.com", "alice.smith@example.com"),
    ("A.l.i.c.e@gmail.com", "a.l.i.c.e@gmail.com", "alice@gmail.com"),
    ("alice+shop@googlemail.com", "alice+shop@googlemail.com", "alice@gmail.com"),
    ("mailto:bob@example.org", "bob@example.org", "bob@example.org"),
    ("o'neil@example.ie", "o'neil@example.ie", "o'neil@example.ie"),
    ("Ann.Lee@fastmail.co.uk\t", "ann.lee@fastmail.co.uk", "ann.lee@fastmail.co.uk"),
    ("\u00a0ann@fastmail.co.uk\u3000\r\n", "ann@fastmail.co.uk", "ann@fastmail.co.uk"),
    # Invisible characters pasted in with the address: a zero-width space, a joiner, a byte-order mark.
    ("ann.lee@gmail.com\u200b", "ann.lee@gmail.com", "annlee@gmail.com"),
    ("\ufeffAnn\u200d.Lee@fastmail.co.uk", "ann.lee@fastmail.co.uk", "ann.lee@fastmail.co.uk"),
    # Beyond ASCII: NFC, and the domain in its ASCII form (IDNA 2008 / UTS #46); faß.de is not fass.de.
    ("Jörg.Müller@Bücher.DE", "jörg.müller@xn--bcher-kva.de", "jörg.müller@xn--bcher-kva.de"),
    ("jo\u0308rg+news@xn--bcher-kva.de", "jörg+news@xn--bcher-kva.de", "jörg@xn--bcher-kva.de"),
    ("Иван@Пример.РФ", "иван@xn--e1afmkfd.xn--p1ai", "иван@xn--e1afmkfd.xn--p1ai"),
    ("Z.o.ë@GoogleMail.com", "z.o.ë@googlemail.com", "zoë@gmail.com"),
    ("ß@faß.de", "ß@xn--fa-hia.de", "ß@xn--fa-hia.de"),
    ("ann\u00a0lee@bücher.de", None, None),  # a no-break space inside: a typing accident
    ("\U0001f600@bücher.de", None, None),  # an emoji is no mailbox name
    ("jörg@bücher..de", None, None),  # an empty label
    # As mail clients and forms hand them over: after a display name, quoted, ending a sentence.
    ("Ann Lee <Ann.Lee+news@Fastmail.co.uk>", "ann.lee+news@fastmail.co.uk", "ann.lee@fastmail.co.uk"),
    ('"ann.lee@fastmail.co.uk"', "ann.lee@fastmail.co.uk", "ann.lee@fastmail.co.uk"),
    ("ann.lee@fastmail.co.uk.", "ann.lee@fastmail.co.uk", "ann.lee@fastmail.co.uk"),
    ("Jörg <Jörg@Bücher.de>", "jörg@xn--bcher-kva.de", "jörg@xn--bcher-kva.de"),
    ("ann@fastmail.co.uk, bob@example.org", None, None),  # two addresses: neither is taken
    ('["ann@fastmail.co.uk", "bob@example.org"]', None, None),
    ("ann@fastmail.co.uk\nbob@example.org", None, None),  # a line break between them (a multi-line cell)
    ("<ann@fastmail.co.uk\n>", None, None),
    ("ann@fastmail.co.uk/bob@example.org", None, None),
    # In the angle quotes and brackets of other keyboards, and one address inside JSON.
    ("‹Ann.Lee@fastmail.co.uk›", "ann.lee@fastmail.co.uk", "ann.lee@fastmail.co.uk"),
    ("Ann Lee «ann.lee@fastmail.co.uk»", "ann.lee@fastmail.co.uk", "ann.lee@fastmail.co.uk"),
    ("＜ann.lee@fastmail.co.uk＞", "ann.lee@fastmail.co.uk", "ann.lee@fastmail.co.uk"),
    ('["Ann.Lee@fastmail.co.uk"]', "ann.lee@fastmail.co.uk", "ann.lee@fastmail.co.uk"),
    ('{"address": "ann.lee@fastmail.co.uk", "verified": true}', "ann.lee@fastmail.co.uk", "ann.lee@fastmail.co.uk"),
    # One mailbox written twice is one address: the first spelling is the deliverable one.
    ("A.Lee@gmail.com; alee+shop@gmail.com", "a.lee@gmail.com", "alee@gmail.com"),
    ('["not an email", "ann@"]', None, None),
    ("not an email", None, None),
    ("bob@", None, None),
    ("@example.com", None, None),
    ("", None, None),
    (None, None, None),
]


@pytest.mark.parametrize(("raw", "deliverable", "key"), EMAILS)
def test_email_spellings(raw, deliverable, key):
    assert normalise_email(raw) == deliverable
    assert email_match_key(raw) == key


@pytest.mark.parametrize(
    ("raw", "addresses"),
    [
        ("Ann.Lee@fastmail.co.uk", ["ann.lee@fastmail.co.uk"]),
        ("ann@fastmail.co.uk, Bob <bob@example.org>; ann+x@fastmail.co.uk", ["ann@fastmail.co.uk", "bob@example.org"]),
        (
            '{"home": "ann@fastmail.co.uk", "work": ["bob@example.org", "ann@"]}',
            ["ann@fastmail.co.uk", "bob@example.org"],
        ),
        ("‹ann@fastmail.co.uk› ‹bob@example.org›", ["ann@fastmail.co.uk", "bob@example.org"]),
        ("ann@fastmail.co.uk|bob@example.org", ["ann@fastmail.co.uk", "bob@example.org"]),
        ("ann@fastmail.co.uk\r\nbob@example.org", ["ann@fastmail.co.uk", "bob@example.org"]),
        ("n/a", []),
        (None, []),
    ],
)
def test_the_mailboxes_a_field_names(raw, addresses):
    assert email_addresses(raw) == addresses


def test_gmail_dots_and_tags_fold_into_one_key_but_keep_deliverable_address():
    spellings = ["John.Smith@gmail.com", "johnsmith+sale@gmail.com", "j.o.h.n.smith@googlemail.com"]
    assert {email_match_key(s) for s in spellings} == {"johnsmith@gmail.com"}
    assert normalise_email(spellings[1]) == "johnsmith+sale@gmail.com"


def test_dots_matter_outside_gmail():
    assert email_match_key("john.smith@example.com") != email_match_key("johnsmith@example.com")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  JOHN ", "john"),
        ("O'Brien", "obrien"),
        ("Mary-Jane", "mary-jane"),
        ("mary - jane", "mary-jane"),
        ("José", "jose"),
        ("Søren Łukasiewicz", "soren lukasiewicz"),  # letters NFKD does not decompose are spelled out
        ("STRAẞE Æsir Þór Đorđe", "strasse aesir thor dorde"),
        ("Smith, Jr.", "smith jr"),
        ("Dr Peter", "peter"),  # a title before a name goes
        ("Mr. P", "p"),
        ("Drew", "drew"),  # ... and only a title
        ("Dr", "dr"),  # a title alone is all there is
        ("  ", None),
        ("...", None),
    ],
)
def test_names(raw, expected):
    assert normalise_name(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [("sw1a 1aa", "SW1A1AA"), (" SW1A-1AA ", "SW1A1AA"), ("", None)])
def test_postcodes(raw, expected):
    assert normalise_postcode(raw) == expected


def test_sql_forms_agree_with_python_forms():
    values = [e[0] for e in EMAILS] + ["  JOHN ", "O'Brien", "Mary-Jane", "José", "sw1a 1aa", "Smith, Jr.", "Dr Peter"]
    values += ["Søren Łukasiewicz", "STRAẞE Æsir Þór Đorđe", "Zoë Œuvre"]
    con = duckdb.connect()
    con.execute("CREATE TABLE v (x VARCHAR)")
    con.executemany("INSERT INTO v VALUES (?)", [(v,) for v in values])
    with email_functions(con):
        rows = con.execute(
            f"SELECT x, {sql_normalise_email('x')}, {sql_email_match_key('x')}, {sql_normalise_name('x')}, "
            f"{sql_normalise_postcode('x')}, coalesce({sql_email_count('x')}, 0) > 1 FROM v"
        ).fetchall()
    # The Python rules were there for the statement only.
    assert not con.execute("SELECT count(*) FROM duckdb_functions() WHERE function_name LIKE 'cdp_%'").fetchall()[0][0]
    for x, email, key, name, postcode, several in rows:
        assert email == normalise_email(x), x
        assert several == (len(email_addresses(x)) > 1), x
        assert key == email_match_key(x), x
        assert name == normalise_name(x), x
        assert postcode == normalise_postcode(x), x


def test_sql_strip_strips_what_python_strips():
    assert set(WHITESPACE) == {c for c in map(chr, range(0x110000)) if c.isspace()}
    values = ["\tU-1 ", "\u00a0U-2\u2003", " \n", "a\u00a0b"]
    con = duckdb.connect()
    stripped = [con.execute(f"SELECT {sql_trim_id('?')}", [v]).fetchall()[0][0] for v in values]
    assert stripped == [v.strip() or None for v in values]
    # Every character of the Basic Multilingual Plane: stripped exactly when Python strips it.
    kept = con.execute(
        f"""SELECT list(i ORDER BY i) FROM range(1, 65536) t(i)
            WHERE (i < 55296 OR i > 57343) AND {sql_trim_id("chr(i::INTEGER) || 'x'")} = 'x'"""
    ).fetchall()[0][0]
    assert kept == [i for i in range(1, 65536) if not 55296 <= i <= 57343 and chr(i).isspace()]
