"""The privacy tests' world, built through the real pipeline functions, as fixtures: ``world`` (a fresh
copy of the store, its inbox and its export per test) and ``pw`` (the constants and helpers below; pytest
runs with ``--import-mode=importlib``, so test modules cannot import each other or this file).
test_privacy_world.py checks that the world is what the other privacy tests assume.

Identity runs the real ``resolve_identities`` with the Splink step replaced by "no model pairs", so
customers come from the deterministic identifier graph alone. The world: Alice (CRM contact and an
older version of it under her old email, a store receipt under another spelling of her email, a web
cookie with a login and an anonymous page view, an app device, a consent grant, three quarantined rows
carrying her email: two without a time, one malformed CSV line), Bob (CRM contact and a store receipt
with the same landline as Alice, a consent grant), Carol (unrelated), and a withdrawal that names only
the shared landline. Storage is uncompressed so that a grep of the database file sees every value
(LIBRARY-NOTES: compression hides strings from grep).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from cdp.config import Settings
from cdp.store import connect

#: The root conftest's ``plain_pipeline``: ingest, stage, resolve (graph only), profiles, ledger, state.
PlainPipeline = Callable[[duckdb.DuckDBPyConnection, Settings, Path], dict[str, int]]

ALICE_EMAIL = "Alice.Smith+shop@gmail.com"  # as written in CRM
ALICE_STRINGS = (  # every spelling and identifier of Alice that reaches the store
    b"Alice.Smith+shop@gmail.com", b"alice.smith+shop@gmail.com", b"alicesmith@gmail.com",
    b"AliceSmith@GMAIL.com", b"ALICE.SMITH@gmail.com", b"U-ALICE-9", b"L-ALICE-77", b"C-ALICE-1",
    b"ck-alice-1", b"dev-alice-1", b"+447700900461", b"07700 900461", b"alice.old@yahoo.co.uk",
)  # fmt: skip
LANDLINE = "020 7946 0123"
LANDLINE_E164 = "+442079460123"
BOB_EMAIL = b"bob.other@fastmail.co.uk"

INBOX = {
    "crm/contacts.csv": (
        "crm_id,first_name,last_name,email,phone,date_of_birth,address_line1,city,postcode,country,"
        "loyalty_id,user_id,created_at,updated_at\n"
        f"C-ALICE-1,Alice,Smith,{ALICE_EMAIL},{LANDLINE},1985-02-03,1 Rose Lane,London,N1 1AA,GB,"
        "L-ALICE-77,U-ALICE-9,2025-01-01T10:00:00Z,2025-06-01T10:00:00Z\n"
        f"C-BOB-2,Bob,Other,bob.other@fastmail.co.uk,{LANDLINE},1950-11-30,1 Rose Lane,London,N1 1AA,GB,"
        "L-BOB-12,U-BOB-3,2025-01-02T10:00:00Z,2025-06-02T10:00:00Z\n"
        "C-CAROL-3,Carol,Jones,carol.jones@yahoo.co.uk,07700 900999,1990-07-07,9 Elm Road,Leeds,LS1 1AA,GB,"
        "L-CAROL-5,U-CAROL-4,2025-01-03T10:00:00Z,2025-06-03T10:00:00Z\n"
    ),
    # An older export of Alice's contact, under her old email: raw keeps both versions, staging the latest.
    "crm/contacts_2024.csv": (
        "crm_id,first_name,last_name,email,phone,date_of_birth,loyalty_id,user_id,created_at,updated_at\n"
        "C-ALICE-1,Alice,Smith,alice.old@yahoo.co.uk,,1985-02-03,L-ALICE-77,,2024-01-01T10:00:00Z,"
        "2024-01-01T10:00:00Z\n"
        "C-CAROL-3,Carol,Jones,carol.jones@yahoo.co.uk,,1990-07-07,L-CAROL-5,,2024-01-03T10:00:00Z,"
        "2024-01-03T10:00:00Z\n"
    ),
    "store/receipts.csv": (
        "transaction_id,transaction_time,store_id,loyalty_id,email,phone,first_name,last_name,postcode,"
        "amount,currency,items\n"
        "T-1,2025-03-01T12:00:00Z,S1,L-ALICE-77,AliceSmith@GMAIL.com,,Alice,Smith,N1 1AA,25.00,GBP,2\n"
        f"T-2,2025-03-02T12:00:00Z,S1,,,{LANDLINE},Bob,Other,N1 1AA,40.00,GBP,1\n"
        # Carol's receipt carries an email so that raw_store.email never becomes all NULL after Alice goes:
        # DuckDB 2.0 fails to bind identity.standardise.sql_email_match_key over an all-NULL column
        # ("BindBuiltinScalarFunction did not return a BoundFunctionExpression"; split_part in a CASE).
        "T-3,2025-03-03T12:00:00Z,S2,L-CAROL-5,carol.jones@yahoo.co.uk,,Carol,Jones,LS1 1AA,10.00,GBP,1\n"
        "T-4,,S1,,ALICE.SMITH@gmail.com,,Alice,Smith,N1 1AA,5.00,GBP,1\n"  # no time: quarantined
    ),
    "web/events.csv": (
        "event_id,event_time,anonymous_id,user_id,email,event_type,page_url\n"
        "W-1,2025-04-01T09:00:00Z,ck-alice-1,U-ALICE-9,,login,/account\n"
        "W-2,2025-04-01T09:05:00Z,ck-alice-1,,,page_view,/shoes\n"
        "W-3,2025-04-02T09:00:00Z,ck-bob-1,U-BOB-3,,login,/account\n"
        "W-4,2025-04-03T09:00:00Z,ck-carol-1,,carol.jones@yahoo.co.uk,page_view,/home\n"
        "W-5,,ck-alice-1,,ALICE.SMITH@gmail.com,newsletter_signup,/news\n"  # no time: quarantined
        "W-7,2025-04-01T09:09:00Z,ck-alice-1,,alice.smith@gmail.com,page_view,/a,b\n"  # malformed line
    ),
    "app/events.csv": (
        "event_id,event_time,device_id,user_id,email,phone,event_type,platform\n"
        "A-1,2025-05-01T08:00:00Z,dev-alice-1,U-ALICE-9,,07700 900461,login,ios\n"
        "A-2,2025-05-01T08:01:00Z,dev-alice-1,,,,product_view,ios\n"
        "A-3,2025-05-02T08:00:00Z,dev-carol-1,U-CAROL-4,carol.jones@yahoo.co.uk,,app_open,android\n"
    ),
    "consent/events.csv": (
        "consent_id,event_time,purpose,status,source,policy_version,email,phone,user_id,crm_id\n"
        f"K-1,2025-02-01T00:00:00Z,email_marketing,granted,web_banner,v1,{ALICE_EMAIL},,,\n"
        "K-2,2025-02-02T00:00:00Z,email_marketing,granted,crm,v1,bob.other@fastmail.co.uk,,,\n"
        f"K-3,2025-02-03T00:00:00Z,sms_marketing,withdrawn,store_form,v1,,{LANDLINE},,\n"
        "K-4,2025-02-04T00:00:00Z,email_marketing,granted,crm,v1,carol.jones@yahoo.co.uk,,,\n"
    ),
}


def write_inbox(root: Path, files: dict[str, str] = INBOX) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def customer_of(con: duckdb.DuckDBPyConnection, source: str, record_id: str) -> str:
    return con.execute(
        "SELECT customer_id FROM customer_source_records WHERE source = ? AND source_record_id = ?",
        [source, record_id],
    ).fetchall()[0][0]


def export_file(con: duckdb.DuckDBPyConnection, settings: Settings, out: Path) -> str:
    """A real export (consent-enforced) of everyone who granted email marketing; returns its id."""
    from consent.export import export_selected
    from consent.segments import get_segment

    segment = get_segment(settings.segments_dir, "all_customers")
    return export_selected(con, segment, "email_marketing", out).export_id


@dataclass
class World:
    settings: Settings
    inbox: Path
    export_path: Path
    alice: str
    bob: str
    carol: str


_TEMPLATE: dict[str, Path] = {}


def _build_template(root: Path, run_pipeline: PlainPipeline) -> Path:
    settings = Settings(db_path=root / "db" / "cdp.duckdb", home=root / "home", segments_dir=root / "segments")
    (root / "segments").mkdir(parents=True)
    inbox = write_inbox(root / "inbox")
    con = connect(settings.db_path)
    con.execute("PRAGMA force_compression = 'uncompressed'")
    run_pipeline(con, settings, inbox)
    export_file(con, settings, settings.exports_dir / "email_marketing.csv")
    con.close()
    return root


def make_world(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, run_pipeline: PlainPipeline) -> World:
    """A fresh copy of the world (built once per session, copied per test: a copy takes milliseconds)."""
    if "root" not in _TEMPLATE:
        _TEMPLATE["root"] = _build_template(tmp_path_factory.mktemp("privacy_world"), run_pipeline)
    root = tmp_path / "world"
    shutil.copytree(_TEMPLATE["root"], root)
    settings = Settings(db_path=root / "db" / "cdp.duckdb", home=root / "home", segments_dir=root / "segments")
    con = duckdb.connect(str(settings.db_path))
    # The export register holds absolute paths of the template: point them at this copy.
    con.execute("UPDATE export_register SET file = replace(file, ?, ?)", [str(_TEMPLATE["root"]), str(root)])
    ids = {r: customer_of(con, s, r) for s, r in (("crm", "C-ALICE-1"), ("crm", "C-BOB-2"), ("crm", "C-CAROL-3"))}
    con.close()
    return World(
        settings, root / "inbox", settings.exports_dir / "email_marketing.csv",
        ids["C-ALICE-1"], ids["C-BOB-2"], ids["C-CAROL-3"],
    )  # fmt: skip


@pytest.fixture
def world(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, plain_pipeline: PlainPipeline) -> World:
    return make_world(tmp_path, tmp_path_factory, plain_pipeline)


@pytest.fixture
def pw(plain_pipeline: PlainPipeline) -> SimpleNamespace:
    """The world's constants and helpers, for test modules."""
    return SimpleNamespace(
        ALICE_EMAIL=ALICE_EMAIL, ALICE_STRINGS=ALICE_STRINGS, LANDLINE=LANDLINE, LANDLINE_E164=LANDLINE_E164,
        BOB_EMAIL=BOB_EMAIL, INBOX=INBOX, write_inbox=write_inbox, run_pipeline=plain_pipeline,
        customer_of=customer_of, file_bytes=file_bytes,
    )  # fmt: skip


def file_bytes(db_path: Path) -> bytes:
    """The database file and its write-ahead log (if any), as bytes."""
    data = db_path.read_bytes()
    wal = Path(f"{db_path}.wal")
    return data + (wal.read_bytes() if wal.exists() else b"")
