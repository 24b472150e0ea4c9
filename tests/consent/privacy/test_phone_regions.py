"""A CRM contact's national phone number is read in the contact's own country, everywhere it is read:
staging, erasure (raw rows and malformed lines that carry it) and the suppression of re-ingested files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from cdp.config import Settings
from cdp.store import connect
from consent import erasure
from consent.erasure import Subject

CRM_HEADER = (
    "crm_id,first_name,last_name,email,phone,date_of_birth,address_line1,city,postcode,country,"
    "loyalty_id,user_id,created_at,updated_at\n"
)
SIOBHAN = (  # Irish mobile, written nationally, on a contact whose country says so
    "C-IE-1,Siobhan,Murphy,siobhan.murphy@eircom.net,087 123 4567,1984-04-04,1 Main St,Cork,T12 X2Y3,IE,"
    ",,2025-01-01T10:00:00Z,2025-01-01T10:00:00Z\n"
)
INBOX = {
    "crm/contacts.csv": CRM_HEADER
    + SIOBHAN
    + "C-GB-2,Tom,Price,tom.price@fastmail.co.uk,020 7946 0123,1970-03-03,2 High St,London,N1 1AA,GB,"
    ",,2025-01-02T10:00:00Z,2025-01-02T10:00:00Z\n"
    # No country: the installation's default region (GB).
    "C-XX-3,Ann,Lee,ann.lee@mailbox.org,07700 900461,1990-01-01,,,,,,,2025-01-03T10:00:00Z,\n",
    # The same spelling at a till, which has no country: a number of the default region.
    "store/receipts.csv": "transaction_id,transaction_time,store_id,email,phone,first_name,last_name,amount\n"
    "T-1,2025-03-01T12:00:00Z,S1,ann.lee@mailbox.org,087 123 4567,Ann,Lee,5.00\n",
}


def _run(tmp_path: Path, pw: SimpleNamespace, files: dict[str, str]) -> tuple[Settings, dict[str, int]]:
    settings = Settings(db_path=tmp_path / "cdp.duckdb", home=tmp_path / "home", segments_dir=tmp_path / "segments")
    pw.write_inbox(tmp_path / "inbox", files)
    con = connect(settings.db_path)
    counts = pw.run_pipeline(con, settings, tmp_path / "inbox")
    con.close()
    return settings, counts


def _phones(settings: Settings) -> dict[str, str | None]:
    con = connect(settings.db_path)
    rows = con.execute("SELECT source_record_id, phone_e164 FROM stg_records").fetchall()
    con.close()
    return dict(rows)


def test_a_contacts_national_number_is_read_in_its_own_country(tmp_path: Path, pw: SimpleNamespace) -> None:
    settings, _ = _run(tmp_path, pw, INBOX)
    phones = _phones(settings)
    assert phones["C-IE-1"] == "+353871234567"
    assert phones["C-GB-2"] == "+442079460123"
    assert phones["C-XX-3"] == "+447700900461"
    assert phones["T-1"] != "+353871234567"  # the till's row has no country: not Siobhan's number


def test_erasing_by_the_international_number_reaches_the_contact_and_keeps_her_out(
    tmp_path: Path, pw: SimpleNamespace
) -> None:
    settings, _ = _run(tmp_path, pw, INBOX)
    receipt = erasure.erase(settings, Subject.from_options(None, "+353 87 123 4567", None), dry_run=False)
    assert receipt.deleted["raw_crm"] == 1 and receipt.suppressed.get("phone_e164") == 1
    con = connect(settings.db_path)
    assert not con.execute("SELECT * FROM raw_crm WHERE crm_id = 'C-IE-1'").fetchall()
    # The till's row under the same spelling is another number: it stays.
    assert con.execute("SELECT count(*) FROM raw_store WHERE transaction_id = 'T-1'").fetchall()[0][0] == 1
    con.close()
    # A re-export of the CRM (new content), and a malformed line with her number and country.
    again = CRM_HEADER + SIOBHAN.replace("C-IE-1", "C-IE-9").replace("siobhan.murphy", "s.murphy")
    again += '"C-IE-8,Siobhan,Murphy,,087 123 4567,,,,,IE\n'  # a quote left open: malformed
    _, counts = _run(tmp_path, pw, {"crm/contacts_again.csv": again})
    assert counts["suppressed"] == 2
    assert _phones(settings).get("C-IE-9") is None
    con = connect(settings.db_path)
    raw = con.execute("SELECT count(*) FROM quarantine WHERE raw LIKE '%087 123 4567%'").fetchall()[0][0]
    con.close()
    assert raw == 0
