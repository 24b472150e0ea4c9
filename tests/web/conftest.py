"""Fixtures of the web tests: a small store built by the pipeline's own functions, users of every role, and
an app over them. The store is built once per session and copied per test (a copy takes milliseconds).

The world: Alice (CRM contact, web login, store receipt; grants email marketing), Bob (CRM contact sharing
Alice's landline; grants email marketing, later withdraws), Carol (CRM contact, no consent at all), Dan
(store receipt with an email; grants email and SMS marketing), Erin (web sign-up with an email; grants email
marketing). Identity comes from the deterministic identifier graph (the Splink step is replaced by "no
model pairs", as in the privacy tests: the model is not what these tests are about).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from fastapi.testclient import TestClient

from cdp.config import Settings
from cdp.store import connect
from cdp.users import UserStore

#: The root conftest's ``plain_pipeline``: ingest, stage, resolve (graph only), profiles, ledger, state.
PlainPipeline = Callable[[duckdb.DuckDBPyConnection, Settings, Path], dict[str, int]]

ALICE_EMAIL = "alice.smith@gmail.com"
LANDLINE = "020 7946 0123"
PASSWORD = "correct horse battery staple"

INBOX = {
    "crm/contacts.csv": (
        "crm_id,first_name,last_name,email,phone,date_of_birth,address_line1,city,postcode,country,"
        "loyalty_id,user_id,created_at,updated_at\n"
        f"C-1,Alice,Smith,{ALICE_EMAIL},{LANDLINE},1985-02-03,1 Rose Lane,London,N1 1AA,GB,"
        "L-1,U-1,2025-01-01T10:00:00Z,2025-06-01T10:00:00Z\n"
        f"C-2,Bob,Other,bob.other@fastmail.co.uk,{LANDLINE},1950-11-30,1 Rose Lane,London,N1 1AA,GB,"
        "L-2,U-2,2025-01-02T10:00:00Z,2025-06-02T10:00:00Z\n"
        "C-3,Carol,Jones,carol.jones@yahoo.co.uk,07700 900999,1990-07-07,9 Elm Road,Leeds,LS1 1AA,GB,"
        "L-3,U-3,2025-01-03T10:00:00Z,2025-06-03T10:00:00Z\n"
    ),
    "store/receipts.csv": (
        "transaction_id,transaction_time,store_id,loyalty_id,email,phone,first_name,last_name,postcode,"
        "amount,currency,items\n"
        "T-1,2025-03-01T12:00:00Z,S1,L-1,Alice.Smith@GMail.com,,Alice,Smith,N1 1AA,125.00,GBP,2\n"
        "T-2,2025-03-02T12:00:00Z,S1,,dan.brown@gmail.com,07911 123456,Dan,Brown,E1 6AN,310.00,GBP,4\n"
        "T-3,2025-03-03T12:00:00Z,S2,L-3,carol.jones@yahoo.co.uk,,Carol,Jones,LS1 1AA,150.00,GBP,1\n"
        "T-4,2025-03-04T12:00:00Z,S2,L-2,,,Bob,Other,N1 1AA,220.00,GBP,1\n"
    ),
    "web/events.csv": (
        "event_id,event_time,anonymous_id,user_id,email,event_type,page_url\n"
        "W-1,2025-04-01T09:00:00Z,ck-alice,U-1,,login,/account\n"
        "W-2,2025-04-01T09:05:00Z,ck-alice,,,page_view,/shoes\n"
        "W-3,2025-04-03T09:00:00Z,ck-erin,,erin.west@gmail.com,sign_up,/join\n"
    ),
    "app/events.csv": (
        "event_id,event_time,device_id,user_id,email,phone,event_type,platform\n"
        "A-1,2025-05-01T08:00:00Z,dev-carol,U-3,carol.jones@yahoo.co.uk,,app_open,android\n"
    ),
    "consent/events.csv": (
        "consent_id,event_time,purpose,status,source,policy_version,email,phone,user_id,crm_id\n"
        f"K-1,2025-02-01T00:00:00Z,email_marketing,granted,web_banner,v1,{ALICE_EMAIL},,,\n"
        "K-2,2025-02-02T00:00:00Z,email_marketing,granted,crm,v1,bob.other@fastmail.co.uk,,,\n"
        "K-3,2025-02-10T00:00:00Z,email_marketing,withdrawn,preference_centre,v1,,,,C-2\n"
        "K-4,2025-03-02T12:00:00Z,email_marketing,granted,store_form,v1,dan.brown@gmail.com,,,\n"
        "K-5,2025-03-02T12:00:00Z,sms_marketing,granted,store_form,v1,,07911 123456,,\n"
        "K-6,2025-04-03T09:00:00Z,email_marketing,granted,web_banner,v1,erin.west@gmail.com,,,\n"
    ),
}

SEGMENT = (
    "name: big_spenders\ndescription: Spent 100 or more\nwhere:\n  all:\n    - total_spend >= 100\n"
    "fields: [first_name]\n"
)


def build_store(settings: Settings, run: PlainPipeline, inbox: dict[str, str] = INBOX) -> None:
    """Write the inbox and run the pipeline's plain functions on it (the root conftest's ``plain_pipeline``)."""
    root = settings.home / "inbox"
    for name, text in inbox.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    con = connect(settings.db_path)
    try:
        run(con, settings, root)
    finally:
        con.close()
    shutil.rmtree(root)


def settings_in(root: Path) -> Settings:
    return Settings(db_path=root / "db" / "cdp.duckdb", home=root / "home", segments_dir=root / "segments")


@dataclass
class World:
    settings: Settings
    users: UserStore
    tokens: dict[str, str]  # role -> API token
    names: dict[str, str]  # role -> user name (every user's password is PASSWORD)
    password: str = PASSWORD

    def customer_of(self, source: str, record_id: str) -> str:
        con = duckdb.connect(str(self.settings.db_path), read_only=True)
        try:
            return con.execute(
                "SELECT customer_id FROM customer_source_records WHERE source = ? AND source_record_id = ?",
                [source, record_id],
            ).fetchall()[0][0]
        finally:
            con.close()


_TEMPLATE: dict[str, Path] = {}

#: role -> user name
USERS = {"marketer": "mary", "privacy_officer": "pete", "admin": "ada"}


def _template(factory: pytest.TempPathFactory, run: PlainPipeline) -> Path:
    if "root" not in _TEMPLATE:
        root = factory.mktemp("web_world")
        settings = settings_in(root)
        (root / "segments").mkdir()
        (root / "segments" / "big_spenders.yaml").write_text(SEGMENT)
        build_store(settings, run)
        users = UserStore.for_home(settings.home)
        for role, name in USERS.items():
            users.add(name, role, PASSWORD)
        _TEMPLATE["root"] = root
    return _TEMPLATE["root"]


@pytest.fixture
def world(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, plain_pipeline: PlainPipeline) -> World:
    root = tmp_path / "world"
    shutil.copytree(_template(tmp_path_factory, plain_pipeline), root)
    settings = settings_in(root)
    users = UserStore.for_home(settings.home)
    tokens = {role: users.new_token(name) for role, name in USERS.items()}
    return World(settings, users, tokens, dict(USERS))


@pytest.fixture
def client(world: World) -> TestClient:
    from cdp.web import create_app

    return TestClient(create_app(world.settings, world.users))


def bearer(world: World, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.tokens[role]}"}


@pytest.fixture
def auth(world: World):  # noqa: ANN201  (a small helper: role -> headers)
    return lambda role: bearer(world, role)
