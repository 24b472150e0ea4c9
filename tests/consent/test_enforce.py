"""Who may be exported for a purpose (consent/enforce.py); not segment parsing or file writing."""

from __future__ import annotations

import pandas as pd
import pytest

from cdp.errors import CdpError
from consent import enforce


def test_only_current_grants_with_a_contact_point_pass(con):
    audience = enforce.approve(con, "email_marketing")
    assert audience.contact == "email"
    assert audience.rows.to_dict("records") == [
        {"customer_id": "cA", "email": "alee@mailbox.com"},
        {"customer_id": "cC", "email": "clee@mailbox.com"},
        {"customer_id": "cG", "email": "glee@mailbox.com"},
    ]


def test_every_customer_left_out_has_a_reason(con):
    counts = enforce.exclusion_counts(con, "email_marketing")
    assert counts == {
        "candidates": 7, "allowed": 3, "restricted": 1, "withdrawn": 1, "no_consent": 1,
        "no_contact_point": 1, "shared_contact_point": 0,
    }  # fmt: skip
    reasons = enforce.decide(con, "email_marketing").set_index("customer_id")["excluded_because"]
    assert reasons["cB"] == "withdrawn" and reasons["cD"] == "no_consent" and reasons["cE"] == "restricted"
    assert reasons["cF"] == "no_contact_point" and pd.isna(reasons["cA"])


def test_a_shared_contact_point_is_left_out_while_any_holder_may_not_be_contacted(con, w):
    # cC granted sms with their own email; the household phone is cC's profile phone and cB's too
    w.add_consent(con, "k70", w.at(9), "sms_marketing", "granted", email="clee@mailbox.com")
    w.rebuild(con, as_of=w.at(20))
    reasons = enforce.decide(con, "sms_marketing").set_index("customer_id")["excluded_because"]
    assert reasons["cC"] == "shared_contact_point" and reasons["cB"] == "no_consent"
    w.add_consent(con, "k71", w.at(9), "sms_marketing", "granted", crm_id="crmB")
    w.rebuild(con, as_of=w.at(20))
    sms = enforce.approve(con, "sms_marketing").rows
    assert sms.to_dict("records") == [
        {"customer_id": "cA", "phone": "+447911100001"},
        {"customer_id": "cB", "phone": w.HOUSEHOLD},
        {"customer_id": "cC", "phone": w.HOUSEHOLD},
    ]  # once every holder of the household phone has granted, it may be used


def test_lifted_restriction_no_longer_excludes(con, w):
    con.execute("UPDATE restrictions SET lifted_at = ? WHERE customer_id = 'cE'", [w.at(8)])
    assert "cE" in set(enforce.approve(con, "email_marketing").rows["customer_id"])


def test_no_consent_state_at_all_means_nobody(con):
    con.execute("DROP TABLE consent_state")
    assert enforce.approve(con, "email_marketing").rows.empty
    counts = enforce.exclusion_counts(con, "analytics")
    assert counts["no_consent"] == 6 and counts["restricted"] == 1 and counts["allowed"] == 0


def test_purpose_channels(con):
    push = enforce.approve(con, "push_marketing")
    assert push.rows.to_dict("records") == [{"customer_id": "cF", "device_id": "devF"}]
    sms = enforce.approve(con, "sms_marketing")
    assert sms.rows.to_dict("records") == [{"customer_id": "cA", "phone": "+447911100001"}]
    analytics = enforce.approve(con, "analytics")
    assert list(analytics.rows.columns) == ["customer_id"] and analytics.rows.empty


def test_registered_exclusion_applies_to_every_decision(con):
    con.execute("CREATE TABLE erased_test (customer_id VARCHAR)")
    con.execute("INSERT INTO erased_test VALUES ('cA')")
    rule = enforce.Exclusion(
        "erased", "c.customer_id IN (SELECT customer_id FROM erased_test)", requires=("erased_test",)
    )
    saved = list(enforce.EXCLUSIONS)
    try:
        enforce.register_exclusion(rule)
        assert set(enforce.approve(con, "email_marketing").rows["customer_id"]) == {"cC", "cG"}
        assert enforce.exclusion_counts(con, "email_marketing")["erased"] == 1
    finally:
        enforce.EXCLUSIONS[:] = saved


def test_verify_refuses_rows_that_were_never_approved(con):
    forged = pd.DataFrame({"customer_id": ["cA", "cB"], "email": ["alee@mailbox.com", "blee@mailbox.com"]})
    with pytest.raises(enforce.ConsentViolation, match="1 of 2 export rows"):
        enforce.verify(con, "email_marketing", forged)


def test_verify_refuses_a_redirected_contact_point(con):
    redirected = pd.DataFrame({"customer_id": ["cA"], "email": ["someone.elselee@mailbox.com"]})
    with pytest.raises(enforce.ConsentViolation):
        enforce.verify(con, "email_marketing", redirected)
    with pytest.raises(enforce.ConsentViolation, match="without a customer_id"):
        enforce.verify(con, "email_marketing", pd.DataFrame({"customer_id": [None], "email": ["alee@mailbox.com"]}))
    with pytest.raises(enforce.ConsentViolation, match="must carry customer_id and email"):
        enforce.verify(con, "email_marketing", pd.DataFrame({"customer_id": ["cA"]}))


def test_verify_sees_a_withdrawal_made_after_approval(con, w):
    audience = enforce.approve(con, "email_marketing")
    enforce.verify(con, "email_marketing", audience.rows)  # still fine
    con.execute(
        "INSERT INTO stg_consent (consent_id, event_time, purpose, status, email, email_key) "
        "VALUES ('late', ?, 'email_marketing', 'withdrawn', 'alee@mailbox.com', 'alee@mailbox.com')",
        [w.at(10)],
    )
    w.rebuild(con, as_of=w.at(20))
    with pytest.raises(enforce.ConsentViolation):
        enforce.verify(con, "email_marketing", audience.rows)


def test_unknown_purpose_is_one_line(con):
    with pytest.raises(CdpError, match="unknown purpose 'spam'"):
        enforce.approve(con, "spam")


def test_sms_needs_a_mobile_number(con, w):
    w.add_record(con, "cD", "store", "tD", w.at(4), phone_e164="+442079460001", store_id="s1")  # a landline
    w.add_consent(con, "k90", w.at(5), "sms_marketing", "granted", crm_id="crmD")
    w.rebuild(con, as_of=w.at(20))
    decided = enforce.decide(con, "sms_marketing").set_index("customer_id")
    assert decided.loc["cD", "excluded_because"] == "no_contact_point"
    phone = con.execute("SELECT phone FROM customer_profiles WHERE customer_id = 'cD'").fetchall()[0][0]
    assert phone == "+442079460001"  # shown on the profile, never texted


def test_approve_counts_match_exclusion_counts(con):
    for purpose in ("email_marketing", "sms_marketing", "push_marketing", "analytics"):
        assert enforce.approve(con, purpose).counts == enforce.exclusion_counts(con, purpose)
