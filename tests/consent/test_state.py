"""Consent ledger and consent state through the identity graph; not enforcement or exports."""

from __future__ import annotations

from consent.ledger import sync_ledger
from consent.state import build_consent_state


def test_latest_event_wins_whichever_identifier_it_came_through(con, w):
    email = w.states(con, "email_marketing")
    assert email["cA"] == "granted"
    assert email["cB"] == "withdrawn"  # granted via CRM id, withdrew later at a store with the household phone
    assert email["cC"] == "granted"  # the household withdrawal reached cC too, but cC granted again later
    assert "cD" not in email  # no event, no row: no consent


def test_household_withdrawal_applies_to_all_but_grant_to_none(con, w):
    sms = w.states(con, "sms_marketing")
    assert sms == {"cA": "granted"}  # the grant through the household phone granted nobody
    con.execute("DELETE FROM stg_consent WHERE consent_id = 'k5'")
    con.execute("DELETE FROM consent_events WHERE consent_id = 'k5'")
    w.rebuild(con, as_of=w.at(20))
    assert w.states(con, "email_marketing")["cC"] == "withdrawn"


def test_grant_through_unique_identifier_survives_an_ambiguous_one_on_the_same_event(con, w):
    w.add_consent(con, "k20", w.at(8), "sms_marketing", "granted", email="clee@mailbox.com", phone_e164=w.HOUSEHOLD)
    w.rebuild(con, as_of=w.at(20))
    sms = w.states(con, "sms_marketing")
    assert sms["cC"] == "granted" and "cB" not in sms
    via = con.execute(
        "SELECT via FROM consent_state WHERE customer_id = 'cC' AND purpose = 'sms_marketing'"
    ).fetchall()[0][0]
    assert via == "email_key"  # the household phone carried no grant


def test_withdrawal_at_the_same_instant_beats_a_grant(con, w):
    w.add_consent(con, "k30", w.at(9), "analytics", "granted", crm_id="crmD")
    w.add_consent(con, "k31", w.at(9), "analytics", "withdrawn", email="dlee@mailbox.com")
    w.rebuild(con, as_of=w.at(20))
    assert w.states(con, "analytics")["cD"] == "withdrawn"


def test_events_apply_from_their_timestamp(con, w):
    w.add_consent(con, "k40", w.at(25), "email_marketing", "withdrawn", email="alee@mailbox.com")
    w.rebuild(con, as_of=w.at(20))
    assert w.states(con, "email_marketing")["cA"] == "granted"
    w.rebuild(con, as_of=w.at(26))
    assert w.states(con, "email_marketing")["cA"] == "withdrawn"


def test_event_for_an_unseen_identifier_is_kept_and_applies_once_it_appears(con, w):
    w.add_consent(con, "k50", w.at(2), "profiling", "granted", loyalty_id="LNEW")
    counts = w.rebuild(con, as_of=w.at(20))
    assert counts["unmatched_events"] == 1 and "cH" not in w.states(con, "profiling")
    w.add_record(con, "cH", "store", "tH", w.at(10), loyalty_id="LNEW", store_id="s2")
    counts = w.rebuild(con, as_of=w.at(20))
    assert w.states(con, "profiling")["cH"] == "granted" and counts["unmatched_events"] == 0


def test_app_push_opt_in_and_out_become_push_marketing_consent(con, w):
    assert w.states(con, "push_marketing") == {"cF": "granted"}
    row = con.execute("SELECT origin, source, status FROM consent_events WHERE event_id = 'app:pF2'").fetchall()
    assert row == [("app", "app_prompt", "granted")]
    w.add_record(con, "cF", "app", "pF3", w.at(11), device_id="devF", event_type="push_opt_out")
    w.rebuild(con, as_of=w.at(20))
    assert w.states(con, "push_marketing") == {"cF": "withdrawn"}


def test_ledger_is_append_only_and_idempotent(con, w):
    before = con.execute("SELECT count(*) FROM consent_events").fetchall()[0][0]
    again = sync_ledger(con)
    assert again["appended_consent"] == 0 and again["appended_app"] == 0 and again["events"] == before
    w.add_consent(con, "k60", w.at(3), "not_a_purpose", "granted", email="alee@mailbox.com")
    w.add_consent(con, "k61", w.at(3), "analytics", "maybe", email="alee@mailbox.com")
    counts = sync_ledger(con)
    assert counts["appended_consent"] == 0 and counts["not_consent"] == 2


def test_ledger_event_ids_stay_unique_through_resent_versions(con, w):
    """The ledger has no primary key (its index was most of what a batch's checkpoint wrote): its ids are
    unique by construction. A consent row re-sent with other content is a new version, with the same content
    it is nothing new, and a version seen before is not appended again."""
    w.add_consent(con, "k90", w.at(3), "analytics", "granted", email="alee@mailbox.com", batch_id="v1")
    w.add_consent(con, "k90", w.at(4), "analytics", "withdrawn", email="alee@mailbox.com", batch_id="v2")
    w.add_consent(con, "k90", w.at(4), "analytics", "withdrawn", email="alee@mailbox.com", batch_id="v3")
    w.add_consent(con, "k90", w.at(3), "analytics", "granted", email="alee@mailbox.com", batch_id="v4")
    for _ in range(2):
        sync_ledger(con)
    ids = [i for (i,) in con.execute("SELECT event_id FROM consent_events WHERE consent_id = 'k90'").fetchall()]
    assert len(ids) == 2 and "consent:k90" in ids and ids[0] != ids[1]
    assert con.execute("SELECT count(*) - count(DISTINCT event_id) FROM consent_events").fetchall() == [(0,)]


def test_ledger_compares_the_rows_of_new_batches_and_of_rows_without_one(con, w):
    w.add_consent(con, "k70", w.at(3), "analytics", "granted", email="alee@mailbox.com", batch_id="b1")
    assert sync_ledger(con)["appended_consent"] == 1
    # A row of a batch the ledger took in already is not compared again (it was in the ledger, or left out).
    w.add_consent(con, "k71", w.at(3), "analytics", "granted", email="blee@mailbox.com", batch_id="b1")
    assert sync_ledger(con)["appended_consent"] == 0
    w.add_consent(con, "k72", w.at(4), "analytics", "withdrawn", email="blee@mailbox.com", batch_id="b2")
    w.add_consent(con, "k73", w.at(4), "analytics", "granted", email="clee@mailbox.com")  # no batch
    assert sync_ledger(con)["appended_consent"] == 2
    assert sync_ledger(con)["appended_consent"] == 0


def test_state_counts_carry_no_personal_data(con, w):
    counts = build_consent_state(con, as_of=w.at(20))
    assert set(counts) == {
        "granted",
        "withdrawn",
        "events",
        "unmatched_events",
        "events_dated_ahead",
        "ambiguous_grants",
    }
    assert counts["ambiguous_grants"] == 1 and all(isinstance(v, int) for v in counts.values())


def test_withdrawal_with_a_mistyped_email_still_reaches_the_customer_but_a_grant_does_not(con, w):
    from cdp.store import raw_ddl

    con.execute(raw_ddl("consent"))
    typos = [
        ("k80", "email_marketing", "withdrawn", "alee@@mailbox.com", 1),
        ("k81", "analytics", "granted", "dlee@@mailbox.com", 2),
    ]
    for cid, purpose, status, written, row in typos:
        w.add_consent(con, cid, w.at(10), purpose, status, batch_id="b9", row_number=row)  # staging: email unreadable
        con.execute(
            "INSERT INTO raw_consent (consent_id, event_time, purpose, status, email, batch_id, row_number) "
            "VALUES (?, ?, ?, ?, ?, 'b9', ?)",
            [cid, w.at(10), purpose, status, written, row],
        )
    w.add_consent(
        con, "k82", w.at(10), "email_marketing", "withdrawn", email="clee@mailbox.con", batch_id="b9", row_number=3
    )
    con.execute(
        "INSERT INTO raw_consent (consent_id, event_time, purpose, status, email, batch_id, row_number) "
        "VALUES ('k82', ?, 'email_marketing', 'withdrawn', 'CLee@Mailbox.con', 'b9', 3)",
        [w.at(10)],
    )
    w.rebuild(con, as_of=w.at(20))
    email = w.states(con, "email_marketing")
    assert email["cA"] == "withdrawn" and email["cC"] == "withdrawn"  # 'alee@@mailbox.com', 'clee@mailbox.con'
    via = con.execute("SELECT via FROM consent_state WHERE customer_id = 'cA' AND purpose = 'email_marketing'")
    assert via.fetchall()[0][0] == "email_loose"
    assert "cD" not in w.states(con, "analytics")  # a mistyped grant grants nothing

    # A till's receipt carrying the same typo: its customer is withdrawn too, and cC stays withdrawn (the
    # withdrawal used to move to the receipt's customer once its email reached someone as written).
    w.add_record(con, "cT", "store", "tT", w.at(11), email="clee@mailbox.con", store_id="s9")
    w.rebuild(con, as_of=w.at(20))
    email = w.states(con, "email_marketing")
    assert email["cC"] == "withdrawn" and email["cT"] == "withdrawn"


def test_events_up_to_now_apply_whatever_the_machines_time_zone(con, w, monkeypatch):
    import time
    from datetime import UTC, datetime, timedelta

    w.rebuild(con, as_of=w.at(20))
    monkeypatch.setenv("TZ", "America/New_York")  # behind UTC: a local "now" would leave the withdrawal out
    time.tzset()
    try:
        an_hour_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
        w.add_consent(con, "k70", an_hour_ago, "email_marketing", "withdrawn", email="alee@mailbox.com")
        w.rebuild(con)  # as of now
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert w.states(con, "email_marketing")["cA"] == "withdrawn"
