"""The web API and console over a small store: the authentication and role matrix of every route, a consented
export, an erasure dry run then confirmation, CSRF, and how users' secrets are stored. Not the browser
(test_browser.py) nor the fuzz run (test_fuzz.py)."""

from __future__ import annotations

import io
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pandas as pd
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from cdp.users import UserStore, hash_password, verify_password
from consent import enforce

LANDLINE = "020 7946 0123"  # Alice and Bob share it (conftest.INBOX)
World = Any  # conftest.World; importlib mode keeps test modules from importing conftest

MARKETER, PRIVACY, ANY = ("marketer",), ("privacy_officer",), ("marketer", "privacy_officer")

#: Every route and who may call it; the matrix test fails when a route is added without being listed here.
ROUTES: dict[tuple[str, str], tuple[str, ...] | None] = {
    ("GET", "/api/health"): None,  # the one anonymous route
    ("GET", "/api/me"): ANY,
    ("GET", "/api/charts"): ANY,
    ("GET", "/api/openapi.json"): ANY,
    ("GET", "/api/segments"): MARKETER,
    ("POST", "/api/segments/preview"): MARKETER,
    ("PUT", "/api/segments/{name}"): MARKETER,
    ("GET", "/api/segments/{name}/preview"): MARKETER,
    ("POST", "/api/segments/{name}/export"): MARKETER,
    ("GET", "/api/exports"): MARKETER,
    ("GET", "/api/privacy/requests"): PRIVACY,
    ("GET", "/api/privacy/requests/{request_id}"): PRIVACY,
    ("POST", "/api/privacy/erasure/dry-run"): PRIVACY,
    ("POST", "/api/privacy/erasure"): PRIVACY,
    ("POST", "/api/privacy/access"): PRIVACY,
    ("POST", "/api/privacy/restriction"): PRIVACY,
    ("POST", "/api/customers/lookup"): PRIVACY,
    ("GET", "/api/customers/{customer_id}"): PRIVACY,
    ("POST", "/login"): None,  # exchanges a password for a session; refuses (401) anything else
    ("POST", "/logout"): ANY,
    ("GET", "/"): ANY,
    ("GET", "/segments"): MARKETER,
    ("GET", "/segments/new"): MARKETER,
    ("GET", "/segments/{name}/edit"): MARKETER,
    ("POST", "/segments/preview"): MARKETER,
    ("POST", "/segments/save"): MARKETER,
    ("GET", "/segments/{name}"): MARKETER,
    ("POST", "/segments/{name}/export"): MARKETER,
    ("GET", "/exports"): MARKETER,
    ("GET", "/privacy"): PRIVACY,
    ("POST", "/privacy/intake"): PRIVACY,
    ("POST", "/privacy/erasure/confirm"): PRIVACY,
    ("GET", "/privacy/requests"): PRIVACY,
    ("GET", "/privacy/requests/{request_id}"): PRIVACY,
    ("GET", "/privacy/audit"): PRIVACY,
    ("GET", "/customers"): PRIVACY,
    ("POST", "/customers/lookup"): PRIVACY,
    ("GET", "/customers/{customer_id}"): PRIVACY,
}
WRONG = {MARKETER: "privacy_officer", PRIVACY: "marketer"}
FILL = {"{name}": "big_spenders", "{request_id}": "PR-20260101-abcdef", "{customer_id}": "cus_000000001"}


def concrete(path: str) -> str:
    for k, v in FILL.items():
        path = path.replace(k, v)
    return path


def login(client: TestClient, world: World, role: str) -> str:
    """Sign in through the form as the user of ``role``; returns the session's CSRF token."""
    page = client.get("/segments")
    assert page.status_code == 401 and 'action="/login"' in page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    signed_in = client.post(
        "/login", data={"username": world.names[role], "password": world.password, "csrf_token": token, "next": "/"}
    )
    assert signed_in.status_code == 200 and f"{world.names[role]} (" in signed_in.text
    return re.search(r'name="csrf_token" value="([^"]+)"', signed_in.text).group(1)  # type: ignore[union-attr]


def audit_rows(world: World) -> list[tuple]:
    con = duckdb.connect(str(world.settings.db_path), read_only=True)
    try:
        return con.execute('SELECT actor, action, request_id, detail, count FROM audit_log ORDER BY "at"').fetchall()
    finally:
        con.close()


def test_every_route_is_in_the_matrix(client: TestClient):
    from cdp.web import api, pages

    every = [*api.router.routes, *pages.router.routes, *client.app.routes]  # the app lists included routers opaquely
    routes = {(m, r.path) for r in every if isinstance(r, APIRoute) for m in r.methods if m != "HEAD"}
    assert routes == set(ROUTES)


def test_anonymous_callers_get_401_on_every_route_but_health(client: TestClient):
    for method, path in ROUTES:
        response = client.request(method, concrete(path), json={} if path.startswith("/api") else None)
        if path == "/api/health":
            assert response.status_code == 200
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        if path.startswith("/api"):
            assert response.headers["www-authenticate"] == "Bearer"
        else:
            assert 'action="/login"' in response.text  # the console answers with its sign-in form


def test_bad_tokens_and_cookies_are_401(client: TestClient, world: World):
    assert client.get("/api/me", headers={"Authorization": "Bearer cdp_nope.nope"}).status_code == 401
    token_id = world.tokens["admin"].split(".")[0]
    assert client.get("/api/me", headers={"Authorization": f"Bearer {token_id}.forged"}).status_code == 401
    client.cookies.set("cdp_session", "abc.def")
    assert client.get("/").status_code == 401
    # A session cookie is no credential for the API, nor a token for the console.
    assert client.get("/", headers={"Authorization": f"Bearer {world.tokens['admin']}"}).status_code == 401


def test_api_wrong_role_is_403_and_right_role_passes(client: TestClient, auth):
    for (method, path), roles in ROUTES.items():
        if not path.startswith("/api") or roles is None:
            continue
        if roles in WRONG:
            wrong = client.request(method, concrete(path), headers=auth(WRONG[roles]), json={})
            assert wrong.status_code == 403, (method, path, wrong.status_code)
        right = client.request(method, concrete(path), headers=auth("admin"), json={})
        assert right.status_code not in (401, 403, 500), (method, path, right.status_code)


@pytest.mark.parametrize("role", ["marketer", "privacy_officer"])
def test_console_wrong_role_is_403(client: TestClient, world: World, role: str):
    csrf = login(client, world, role)
    for (method, path), roles in sorted(ROUTES.items(), key=lambda r: r[0][1] == "/logout"):  # sign out last
        if path.startswith("/api") or roles is None:
            continue
        data = {"csrf_token": csrf} if method == "POST" else None
        response = client.request(method, concrete(path), data=data)
        if role in roles:
            assert response.status_code not in (401, 403, 500), (method, path, response.status_code)
        else:
            assert response.status_code == 403, (method, path, response.status_code)


def test_marketer_never_sees_raw_profiles_nor_erases(client: TestClient, auth, world: World):
    alice = world.customer_of("crm", "C-1")
    assert client.get(f"/api/customers/{alice}", headers=auth("marketer")).status_code == 403
    body = {"by": "customer_id", "value": alice}
    assert client.post("/api/privacy/erasure/dry-run", headers=auth("marketer"), json=body).status_code == 403
    assert client.post("/api/privacy/access", headers=auth("marketer"), json=body).status_code == 403
    assert client.get(f"/api/customers/{alice}", headers=auth("privacy_officer")).status_code == 200
    found = client.post(
        "/api/customers/lookup", headers=auth("privacy_officer"), json={"by": "phone", "value": LANDLINE}
    )
    assert found.json() == {"customer_ids": sorted([alice, world.customer_of("crm", "C-2")])}  # a shared landline


def test_marketer_export_holds_only_consented_customers(client: TestClient, auth, world: World):
    response = client.post(
        "/api/segments/all_customers/export", headers=auth("marketer"), json={"purpose": "email_marketing"}
    )
    assert response.status_code == 200, response.text
    exported = pd.read_csv(io.StringIO(response.text))
    con = duckdb.connect(str(world.settings.db_path), read_only=True)
    try:
        decided = enforce.decide(con, "email_marketing")
        register = con.execute("SELECT segment, purpose, row_count FROM export_register").fetchall()
    finally:
        con.close()
    allowed = set(decided.loc[decided["excluded_because"].isna(), "customer_id"])
    assert set(exported["customer_id"]) == allowed and len(allowed) == 3  # Alice, Dan, Erin
    bob, carol = world.customer_of("crm", "C-2"), world.customer_of("crm", "C-3")
    assert bob not in set(exported["customer_id"]) and carol not in set(exported["customer_id"])  # withdrew; none
    assert register == [("all_customers", "email_marketing", 3)]
    assert response.headers["x-row-count"] == "3"
    assert ("web:mary", "web_export") in {(a, b) for a, b, *_ in audit_rows(world)}


def test_parquet_export_and_preview_counts(client: TestClient, auth):
    preview = client.get("/api/segments/big_spenders/preview?purpose=sms_marketing", headers=auth("marketer"))
    assert preview.status_code == 200
    sms = preview.json()["purposes"]["sms_marketing"]
    assert preview.json()["customers"] == 4 and sms["allowed"] == 1 and sms["no_consent"] == 3
    response = client.post(
        "/api/segments/big_spenders/export", headers=auth("marketer"), json={"purpose": "sms_marketing",
                                                                             "format": "parquet"}
    )  # fmt: skip
    frame = pd.read_parquet(io.BytesIO(response.content))
    assert list(frame.columns) == ["customer_id", "phone", "first_name"] and frame["phone"].tolist() == [
        "+447911123456"
    ]


def test_segment_editor_preview_and_save_use_the_segment_rules(client: TestClient, auth, world: World):
    draft = {"name": "londoners", "where": {"all": ["lower(city) = 'london'", "total_spend > 100"]}, "fields": ["city"]}
    preview = client.post("/api/segments/preview", headers=auth("marketer"), json=draft)
    assert preview.status_code == 200 and preview.json()["customers"] == 2  # Alice and Bob
    email = preview.json()["purposes"]["email_marketing"]
    assert (email["allowed"], email["withdrawn"]) == (1, 1)
    bad = client.post("/api/segments/preview", headers=auth("marketer"),
                      json={"name": "sneaky", "where": "email in (select email from customer_profiles)"})  # fmt: skip
    assert bad.status_code == 400 and "subqueries are not allowed" in bad.json()["detail"]
    assert client.put("/api/segments/londoners", headers=auth("marketer"), json=draft).status_code == 200
    assert (world.settings.segments_dir / "londoners.yaml").exists()
    names = [s["name"] for s in client.get("/api/segments", headers=auth("marketer")).json()]
    assert names == ["all_customers", "big_spenders", "londoners"]


def test_privacy_officer_dry_run_then_confirm_erases(client: TestClient, auth, world: World):
    dan = world.customer_of("store", "T-2")
    body = {"by": "email", "value": " Dan.Brown@GMAIL.com "}
    dry = client.post("/api/privacy/erasure/dry-run", headers=auth("privacy_officer"), json=body)
    assert dry.status_code == 200, dry.text
    plan = dry.json()
    assert plan["customers"] == [dan] and plan["dry_run"] and plan["records_by_source"] == {"store": 1}
    assert plan["table_counts"]["customer_profiles"] == 1 and not plan["deleted"]
    assert client.get(f"/api/customers/{dan}", headers=auth("privacy_officer")).status_code == 200  # still there
    wrong = client.post("/api/privacy/erasure", headers=auth("privacy_officer"),
                        json={**body, "request_id": "PR-20260101-000000", "confirm": True})  # fmt: skip
    assert wrong.status_code == 400 and "run the dry run again" in wrong.json()["detail"]
    unconfirmed = client.post("/api/privacy/erasure", headers=auth("privacy_officer"),
                              json={**body, "request_id": plan["request_id"], "confirm": False})  # fmt: skip
    assert unconfirmed.status_code == 422
    done = client.post("/api/privacy/erasure", headers=auth("privacy_officer"),
                       json={**body, "request_id": plan["request_id"], "confirm": True})  # fmt: skip
    assert done.status_code == 200, done.text
    receipt = done.json()
    assert receipt["request_id"] == plan["request_id"] and receipt["rewritten"]
    assert receipt["deleted"]["customer_profiles"] == 1
    assert receipt["suppressed"] == {"email_key": 1, "phone_e164": 1, "store_receipt": 1}  # his one receipt
    assert client.get(f"/api/customers/{dan}", headers=auth("privacy_officer")).status_code == 404
    assert b"dan.brown" not in world.settings.db_path.read_bytes().lower()
    register = client.get("/api/privacy/requests", headers=auth("privacy_officer")).json()
    assert [(r["request_id"], r["kind"], r["status"]) for r in register] == [
        (plan["request_id"], "erasure", "completed")
    ]
    detail = client.get(f"/api/privacy/requests/{plan['request_id']}", headers=auth("privacy_officer")).json()
    actions = {(a["actor"], a["action"]) for a in detail["audit"]}
    assert {("web:pete", "web_erase_dry_run"), ("web:pete", "web_erase")} <= actions


def test_access_and_restriction_for_privacy_officers(client: TestClient, auth, world: World):
    alice = world.customer_of("crm", "C-1")
    access = client.post("/api/privacy/access", headers=auth("privacy_officer"),
                         json={"by": "phone", "value": "07911 123456"})  # fmt: skip
    assert access.status_code == 200 and access.json()["customer_ids"] == [world.customer_of("store", "T-2")]
    restricted = client.post("/api/privacy/restriction", headers=auth("privacy_officer"),
                             json={"by": "customer_id", "value": alice})  # fmt: skip
    assert restricted.status_code == 200 and restricted.json()["changed"] == 1
    preview = client.get("/api/segments/all_customers/preview?purpose=email_marketing", headers=auth("marketer"))
    assert preview.json()["purposes"]["email_marketing"]["restricted"] == 1
    view = client.get(f"/api/customers/{alice}", headers=auth("privacy_officer")).json()
    assert {r["source_record_id"] for r in view["records"]} == {"C-1", "T-1", "W-1", "W-2"}
    assert [e["consent_id"] for e in view["consent_history"]] == ["K-1"]
    assert view["edges"] and all(e["evidence"] for e in view["edges"])  # why the records are one customer


def test_console_forms_refuse_a_missing_or_wrong_csrf_token(client: TestClient, world: World):
    csrf = login(client, world, "marketer")
    form = {"name": "sneaky", "combine": "all", "conditions": "true"}
    assert client.post("/segments/save", data=form).status_code == 403
    assert client.post("/segments/save", data={**form, "csrf_token": "forged"}).status_code == 403
    assert not (world.settings.segments_dir / "sneaky.yaml").exists()
    export = {"purpose": "email_marketing", "format": "csv"}
    assert client.post("/segments/all_customers/export", data=export).status_code == 403
    assert client.post("/segments/save", data={**form, "csrf_token": csrf}).status_code == 200  # followed redirect
    assert (world.settings.segments_dir / "sneaky.yaml").exists()
    assert client.post("/segments/all_customers/export", data={**export, "csrf_token": csrf}).status_code == 200


def test_sign_in_form_needs_its_own_csrf_token(client: TestClient, world: World):
    client.get("/")  # sets the sign-in CSRF cookie
    response = client.post("/login", data={"username": "mary", "password": world.password, "csrf_token": "forged"})
    assert response.status_code == 401 and "cdp_session" not in response.cookies
    assert client.get("/segments").status_code == 401
    page = client.get("/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    wrong = client.post("/login", data={"username": "mary", "password": "not her password", "csrf_token": token})
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    assert ("web:mary", "web_login_failed") in {(a, b) for a, b, *_ in audit_rows(world)}


def test_console_marketer_and_privacy_journeys(client: TestClient, world: World):
    csrf = login(client, world, "marketer")
    listing = client.get("/segments")
    assert "big_spenders" in listing.text and "<svg" in client.get("/").text
    form = {"csrf_token": csrf, "name": "spenders", "combine": "all", "conditions": "total_spend >= 200"}
    preview = client.post("/segments/preview?fragment=1", data=form)
    assert 'id="preview-customers">2<' in preview.text  # Bob 220, Dan 310
    client.post("/logout", data={"csrf_token": csrf})
    assert client.get("/segments").status_code == 401  # the session ended
    csrf = login(client, world, "privacy_officer")
    dry = client.post("/privacy/intake", data={"csrf_token": csrf, "kind": "erasure", "by": "email",
                                               "value": "erin.west@gmail.com"})  # fmt: skip
    assert dry.status_code == 200 and "Nothing has been erased yet" in dry.text
    request_id = re.search(r'id="request-id">([^<]+)<', dry.text).group(1)  # type: ignore[union-attr]
    form = {"csrf_token": csrf, "by": "email", "value": "erin.west@gmail.com", "request_id": request_id}
    assert client.post("/privacy/erasure/confirm", data=form).status_code == 400  # box not ticked
    receipt = client.post("/privacy/erasure/confirm", data={**form, "confirm": "yes"})
    assert receipt.status_code == 200 and "Erasure receipt" in receipt.text and "completed" in receipt.text
    register = client.get("/privacy/requests")
    assert request_id in register.text and "0</b> overdue" in register.text
    actors = {a for a, *_ in audit_rows(world)}
    assert {"web:mary", "web:pete"} <= actors


def test_password_hashes_are_salted_and_secrets_never_stored(world: World):
    users = UserStore(world.settings.home / "other-users.db")
    users.add("alpha", "marketer", "the same long password")
    users.add("bravo", "marketer", "the same long password")
    first, second = users.password_hash("alpha"), users.password_hash("bravo")
    assert first != second and first.startswith("scrypt$") and "the same long password" not in first
    assert verify_password("the same long password", first) and not verify_password("the same long passworD", first)
    assert hash_password("x" * 12) != hash_password("x" * 12)
    token = users.new_token("alpha")
    raw = (world.settings.home / "other-users.db").read_bytes()
    assert token.split(".")[1].encode() not in raw and b"the same long password" not in raw
    assert users.check_token(token) is not None and users.check_token(token + "x") is None
    db = sqlite3.connect(world.settings.home / "other-users.db")
    assert db.execute("SELECT count(*) FROM api_tokens WHERE secret_hash LIKE 'pbkdf2$%'").fetchone()[0] == 1
    db.close()


def test_every_action_is_audited_with_its_user(client: TestClient, auth, world: World):
    alice = world.customer_of("crm", "C-1")
    client.get("/api/segments/big_spenders/preview", headers=auth("marketer"))
    client.post("/api/segments/big_spenders/export", headers=auth("marketer"), json={"purpose": "analytics"})
    client.put("/api/segments/spenders", headers=auth("marketer"), json={"name": "spenders", "where": "orders > 0"})
    client.post("/api/customers/lookup", headers=auth("privacy_officer"), json={"by": "customer_id", "value": alice})
    client.get(f"/api/customers/{alice}", headers=auth("privacy_officer"))
    client.post("/api/privacy/access", headers=auth("privacy_officer"), json={"by": "customer_id", "value": alice})
    client.post("/api/privacy/restriction", headers=auth("admin"),
                json={"by": "customer_id", "value": alice, "kind": "objection"})  # fmt: skip
    client.post("/api/privacy/erasure/dry-run", headers=auth("privacy_officer"), json={"by": "customer_id",
                                                                                       "value": alice})  # fmt: skip
    lines = audit_rows(world)
    by_user = {(actor, action) for actor, action, *_ in lines}
    assert {
        ("web:mary", "web_segment_preview"), ("web:mary", "web_export"), ("web:mary", "web_segment_save"),
        ("web:pete", "web_customer_lookup"), ("web:pete", "web_customer_view"), ("web:pete", "web_access"),
        ("web:ada", "web_objection"), ("web:pete", "web_erase_dry_run"),
    } <= by_user  # fmt: skip
    text = " ".join(str(v) for line in lines for v in line).lower()
    assert "alice" not in text and "smith" not in text and alice not in text  # counts and request ids only


def test_register_flags_overdue_requests(client: TestClient, auth, world: World):

    from consent import register

    con = duckdb.connect(str(world.settings.db_path))
    try:
        late = register.open_request(con, "access", now=register.utcnow() - timedelta(days=40))
    finally:
        con.close()
    rows = client.get("/api/privacy/requests", headers=auth("privacy_officer")).json()
    assert [(r["request_id"], r["overdue"]) for r in rows] == [(late, True)]
    csrf = login(client, world, "privacy_officer")
    assert csrf
    page = client.get("/privacy/requests").text
    assert late in page and "OVERDUE" in page and '"overdue-count">1<' in page


def test_repeated_wrong_passwords_lock_the_name_out(world: World):
    users = world.users
    for _ in range(5):
        assert users.check_password("mary", "guess guess guess") is None
    assert users.check_password("mary", world.password) is None  # locked for 15 minutes, even when right
    assert users.check_password("pete", world.password) is not None  # other users are not affected


def test_wrong_passwords_sent_together_lock_the_name_out_too(world: World, monkeypatch: pytest.MonkeyPatch):
    """Guesses in parallel: each counts the attempts started before it, not only those already judged."""
    import threading

    import cdp.users

    users, release = world.users, threading.Event()
    judge = cdp.users.verify_password

    def slow_verify(password: str, stored: str) -> bool:
        if password != world.password:
            release.wait(10)  # the guesses are still being checked when the right password arrives
        return judge(password, stored)

    monkeypatch.setattr(cdp.users, "verify_password", slow_verify)
    guesses = [threading.Thread(target=users.check_password, args=("mary", f"guess {i:02d} guess")) for i in range(6)]
    for thread in guesses:
        thread.start()
    try:
        for _ in range(500):  # up to 5 s for the six guesses to start
            if users_failures(users) >= 5:
                break
            release.wait(0.01)
        assert users_failures(users) == 5  # every guess is on record before it is judged; the sixth found the lock
        assert users.check_password("mary", world.password) is None  # five failures before it: locked
    finally:
        release.set()
        for thread in guesses:
            thread.join()


def users_failures(users: Any) -> int:
    db = sqlite3.connect(users.path)
    try:
        return int(db.execute("SELECT count(*) FROM sign_in_failures").fetchone()[0])
    finally:
        db.close()


def test_trying_again_during_a_lockout_does_not_extend_it(world: World, monkeypatch: pytest.MonkeyPatch):
    """Five failures within 15 minutes lock the name for the rest of those 15 minutes, however often the user
    tries meanwhile (each try used to count as one more failure, so the lock never ended)."""
    import cdp.users

    users, start = world.users, datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    clock = [start]
    monkeypatch.setattr(cdp.users, "_now", lambda: clock[0])
    for minute in range(5):
        clock[0] = start + timedelta(minutes=minute)
        assert users.check_password("mary", "guess guess guess") is None
    assert users.locked_until("mary") == start + timedelta(minutes=15)
    for minute in range(5, 15):  # the right password, once a minute, all through the lock
        clock[0] = start + timedelta(minutes=minute)
        assert users.check_password("mary", world.password) is None
    clock[0] = start + timedelta(minutes=15, seconds=1)
    assert users.locked_until("mary") is None and users.check_password("mary", world.password) is not None


def test_the_sign_in_page_says_a_name_is_locked_and_keeps_no_name_typed(client: TestClient, world: World):
    """A password typed in the name field is not kept: failures are stored under a keyed hash only."""
    for _ in range(5):
        page = client.get("/segments")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        answer = client.post("/login", data={"username": "Correct-Horse-99", "password": "wrong password 1",
                                             "csrf_token": token})  # fmt: skip
        assert answer.status_code == 401
    assert "Too many failed sign-ins for this name: try again after" in answer.text
    assert b"correct-horse-99" not in world.users.path.read_bytes().lower()


def test_marketers_see_no_privacy_requests_in_the_charts_and_api_answers_are_not_cached(client, auth):
    assert client.get("/api/charts", headers=auth("marketer")).json()["requests"] == []
    officer = client.get("/api/charts", headers=auth("privacy_officer"))
    assert "requests" in officer.json() and officer.headers["Cache-Control"] == "no-store"


def test_a_dry_run_by_a_formerly_shared_identifier_warns_as_the_command_does(client: TestClient, auth, world: World):
    """Alice shared her landline with Bob: after her erasure, a dry run by that landline reaches Bob alone. The
    API and the console say so before the officer confirms (the erasure by it is refused)."""
    officer = auth("privacy_officer")
    alice = {"by": "customer_id", "value": world.customer_of("crm", "C-1")}
    dry = client.post("/api/privacy/erasure/dry-run", headers=officer, json=alice).json()
    confirm = {**alice, "request_id": dry["request_id"], "confirm": True}
    assert client.post("/api/privacy/erasure", headers=officer, json=confirm).status_code == 200
    landline = {"by": "phone", "value": LANDLINE}
    plan = client.post("/api/privacy/erasure/dry-run", headers=officer, json=landline).json()
    assert plan["formerly_shared"] == [dry["request_id"]]
    assert f"was shared with another customer when request {dry['request_id']} erased them" in plan["warning"]
    csrf = login(client, world, "privacy_officer")
    page = client.post("/privacy/intake", data={"csrf_token": csrf, "kind": "erasure", **landline})
    assert 'id="formerly-shared"' in page.text and dry["request_id"] in page.text


def test_segment_conditions_nested_too_deeply_are_refused_in_one_line(client: TestClient, auth, world: World):
    def deep(n: int) -> Any:
        where: Any = "true"
        for _ in range(n):
            where = {"all": [where]}
        return where

    marketer = auth("marketer")
    fine = client.put("/api/segments/deep", headers=marketer, json={"name": "deep", "where": deep(20)})
    assert fine.status_code == 200, fine.text
    for n in (21, 170):
        saved = client.put("/api/segments/deep", headers=marketer, json={"name": "deep", "where": deep(n)})
        preview = client.post("/api/segments/preview", headers=marketer, json={"name": "deep", "where": deep(n)})
        for answer in (saved, preview):
            assert answer.status_code == 400, answer.text
            assert answer.json()["detail"].endswith(": segment conditions are nested more than 20 groups deep")
    csrf = login(client, world, "marketer")
    form = {"csrf_token": csrf, "name": "deep", "combine": "yaml", "conditions": "[" * 350 + "]" * 350}
    page = client.post("/segments/preview?fragment=1", data=form)  # the live preview shows the error in place
    assert page.status_code == 200 and "segment conditions are nested more than 20 groups deep" in page.text
    saved = client.post("/segments/save", data=form)
    assert saved.status_code == 400 and "segment conditions are nested more than 20 groups deep" in saved.text


def test_request_bodies_are_bounded_before_they_are_read(client: TestClient, auth):
    big = b'{"by": "email", "value": "' + b"x" * 300_000 + b'"}'
    for headers in ({}, auth("privacy_officer")):  # refused before credentials are even looked at
        answer = client.post("/api/privacy/erasure/dry-run", headers={**headers, "Content-Type": "application/json"},
                             content=big)  # fmt: skip
        assert answer.status_code == 413 and answer.json() == {"detail": "request body over 256 KiB"}

    def chunks():  # noqa: ANN202  (a body of no declared length)
        yield b'{"by": "email", '
        yield b'"value": "a@b.com"}'

    chunked = client.post("/api/privacy/erasure/dry-run", headers=auth("privacy_officer"), content=chunks())
    assert chunked.status_code == 411 and chunked.headers["X-Frame-Options"] == "DENY"
    spelled = client.post("/api/privacy/erasure/dry-run", content=chunks(),
                          headers={**auth("privacy_officer"), "Transfer-Encoding": "Chunked"})  # fmt: skip
    assert spelled.status_code == 411  # header values are as sent: uvicorn's parser does not lower them
    assert client.post("/login", content=big).status_code == 413


def test_console_downloads_and_pages_are_not_kept_by_caches(client: TestClient, world: World):
    csrf = login(client, world, "marketer")
    download = client.post("/segments/all_customers/export",
                           data={"csrf_token": csrf, "purpose": "email_marketing", "format": "csv"})  # fmt: skip
    assert download.status_code == 200 and download.headers["Cache-Control"] == "no-store"
    assert client.get("/segments").headers["Cache-Control"] == "no-store"


def test_segment_counts_say_what_they_leave_out_when_the_store_could_not_be_brought_to_now(
    client: TestClient, auth, world: World, monkeypatch: pytest.MonkeyPatch
):
    """With another process holding the store, consent events in force since the last run cannot be applied
    before counting (tests/consent/test_commands.py covers that fallback): the list and the preview say so."""
    import consent.state

    monkeypatch.setattr(consent.state, "events_due", lambda con, now=None: 2)
    rows = client.get("/api/segments", headers=auth("marketer")).json()
    assert {r["name"]: r["consent_events_pending"] for r in rows}["big_spenders"] == 2
    preview = client.get("/api/segments/big_spenders/preview", headers=auth("marketer")).json()
    assert preview["consent_events_pending"] == 2
    login(client, world, "marketer")
    page = client.get("/segments").text
    assert 'id="segments-pending">2 consent events came into force since the last run' in page
