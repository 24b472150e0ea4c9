"""Ingestion: parsing of each source and format, quarantine, rejection, idempotence, suppression, counts.

Runs the Ingestor directly on a temporary DuckDB file; does not run Dagster or identity resolution.
"""

import json
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from cdp.ingest import Ingestor
from cdp.store import SOURCE_SPECS, connect
from cdp.suppression import identifier_hash

SECRET = b"s" * 32


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.strip() + "\n")
    return path


@pytest.fixture
def con(tmp_path):
    con = connect(tmp_path / "cdp.duckdb")
    yield con
    con.close()


@pytest.fixture
def ingestor(con):
    return Ingestor(con, SECRET, region="GB")


def suppress(con, identifier_type: str, value: str) -> None:
    """Put ``value`` on the suppression list, as an erasure does."""
    con.execute(
        "INSERT INTO suppression_list VALUES (?, ?, 'R1', now())",
        [identifier_type, identifier_hash(SECRET, identifier_type, value)],
    )


def ledger(con):
    return con.execute(
        "SELECT file, status, rows_in, rows_loaded, rows_quarantined, rows_suppressed, error FROM ingest_batches "
        "ORDER BY file"
    ).fetchall()


def test_web_csv_types_and_quarantine(tmp_path, con, ingestor):
    write_csv(
        tmp_path / "inbox/web/web-1.csv",
        """
event_id,event_time,anonymous_id,user_id,email,event_type,revenue,currency,campaign_extra
e1,2026-03-01T10:00:00+02:00,c1,,Ann@Example.com,purchase,£1.234,GBP,spring
e2,yesterday,c1,,,page_view,,,
e3,2026-03-01T10:00:00Z,,,,page_view,,,
e4,2026-03-01 09:00:00,c2,u9,,page_view,lots,,
""",
    )
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "web")
    assert (result.status, result.rows_in, result.rows_loaded, result.rows_quarantined) == ("loaded", 4, 2, 2)
    assert result.balanced
    rows = con.execute("SELECT event_id, event_time, revenue, email, extra FROM raw_web ORDER BY 1").fetchall()
    assert str(rows[0][1]) == "2026-03-01 08:00:00"  # converted to UTC
    assert rows[0][2] == Decimal("1.23")  # £1.234: three decimals are read as written, rounded
    assert rows[0][3] == "Ann@Example.com"  # raw keeps values as written
    assert json.loads(rows[0][4]) == {"campaign_extra": "spring"}
    # An unparseable optional value is kept, not silently lost.
    assert json.loads(rows[1][4])["_unparsed_revenue"] == "lots"
    reasons = dict(con.execute("SELECT row_number, reason FROM quarantine").fetchall())
    assert reasons == {2: "unparseable event_time", 3: "empty required value: anonymous_id"}
    raw = json.loads(con.execute("SELECT raw FROM quarantine WHERE row_number = 2").fetchall()[0][0])
    assert raw["event_time"] == "yesterday"


def test_missing_required_column_rejects_file_and_keeps_rows(tmp_path, con, ingestor):
    write_csv(tmp_path / "inbox/store/bad.csv", "transaction_id,amount\nt1,10\nt2,11")
    write_csv(tmp_path / "inbox/store/good.csv", "transaction_id,transaction_time,amount\nt3,2026-01-01,5")
    results = ingestor.ingest_source(tmp_path / "inbox", "store")
    bad, good = results
    assert bad.status == "rejected"
    assert bad.error == "store/bad.csv: missing required column 'transaction_time'"
    assert (bad.rows_in, bad.rows_quarantined) == (2, 2)
    assert good.status == "loaded" and good.rows_loaded == 1  # the run goes on with the other files
    assert con.execute("SELECT count(*) FROM quarantine WHERE file = 'store/bad.csv'").fetchall()[0][0] == 2


def test_malformed_csv_lines_are_quarantined_not_lost(tmp_path, con, ingestor):
    write_csv(
        tmp_path / "inbox/crm/crm.csv",
        'crm_id,first_name,last_name\nC1,Ann,Lee\nC2,Bob\nC3,"Smith, Jr",Ray,extra\nC4,Dee,Fox',
    )
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "crm")
    assert result.rows_in == 4 and result.rows_loaded == 2 and result.rows_quarantined == 2 and result.balanced
    quarantined = con.execute("SELECT row_number, reason FROM quarantine ORDER BY 1").fetchall()
    assert quarantined == [(2, "malformed CSV line: missing columns"), (3, "malformed CSV line: too many columns")]
    loaded = con.execute("SELECT crm_id, row_number FROM raw_crm ORDER BY 1").fetchall()
    assert loaded == [("C1", 1), ("C4", 4)]


@pytest.mark.parametrize("open_quote", [False, True], ids=["sniffed", "read-by-line"])
def test_a_latin1_line_is_quarantined_with_its_bytes(tmp_path, con, ingestor, open_quote):
    """A line in another encoding (a till exporting Latin-1) is quarantined as it arrived: DuckDB writes ``?``
    for bytes that are not UTF-8; they are kept as ``\\xNN`` escapes, valid UTF-8 around them as it is."""
    path = tmp_path / "inbox/crm/crm.csv"
    path.parent.mkdir(parents=True)
    lines = [b"crm_id,first_name,email", b"C1,Ren\xc3\xa9e,renee@x.fr", "C2,J\u00f6rg,j\u00f6rg@x.de".encode("latin-1")]
    if open_quote:  # a quote left open further down: the file is read one line per record
        lines.append(b'C3,"Ann,ann@x.de')
    path.write_bytes(b"\n".join([*lines, b"C4,Dee,dee@x.fr"]) + b"\n")
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "crm")
    assert result.balanced and result.rows_loaded == 2
    row = con.execute("SELECT reason, raw FROM quarantine WHERE row_number = 2").fetchall()
    reasons = ("malformed CSV line: invalid encoding", "malformed CSV line: invalid unicode")  # DuckDB's, ours
    assert len(row) == 1 and row[0][0] in reasons
    assert json.loads(row[0][1]) == {"line": "C2,J\\xf6rg,j\\xf6rg@x.de"}
    assert con.execute("SELECT first_name FROM raw_crm WHERE crm_id = 'C1'").fetchall() == [("Renée",)]


def test_an_unterminated_quote_quarantines_its_line_not_the_file(tmp_path, con, ingestor):
    # DuckDB's dialect sniffer gives up on such a file; it is read again with the header's columns.
    write_csv(tmp_path / "inbox/crm/crm.csv", 'crm_id,first_name,email\nC1,Ann,ann@x.com\nC2,"Bob,bob@x.com\n')
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "crm")
    assert (result.status, result.rows_in, result.rows_loaded, result.rows_quarantined) == ("loaded", 2, 1, 1)
    assert con.execute("SELECT row_number, reason FROM quarantine").fetchall() == [
        (2, "malformed CSV line: unterminated quote")  # the open quote runs to the end of the file
    ]
    assert con.execute("SELECT crm_id, email, row_number FROM raw_crm").fetchall() == [("C1", "ann@x.com", 1)]


def test_header_names_are_matched_whatever_their_case_and_spaces(tmp_path, con, ingestor):
    write_csv(tmp_path / "inbox/crm/crm.csv", "\ufeffCRM_ID, First_Name ,Email,Note\r\nC1,Ann,ann@x.com,vip\r\n")
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "crm")
    assert (result.status, result.rows_loaded) == ("loaded", 1)
    rows = con.execute("SELECT crm_id, first_name, email, extra FROM raw_crm").fetchall()
    assert rows[0][:3] == ("C1", "Ann", "ann@x.com")
    assert json.loads(rows[0][3]) == {"Note": "vip"}  # a column beyond the contract keeps its own name


def test_a_files_own_column_named_like_an_internal_one_does_not_replace_it(tmp_path, con, ingestor):
    write_csv(tmp_path / "inbox/crm/crm.csv", "crm_id,_row,_fate,_Typed_0,created_at\nC1,9,gone,x,2024-01-02")
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "crm")
    assert (result.status, result.rows_loaded) == ("loaded", 1)
    row_number, created_at, extra = con.execute("SELECT row_number, created_at, extra FROM raw_crm").fetchall()[0]
    assert row_number == 1
    assert str(created_at) == "2024-01-02 00:00:00"  # the parsed value, not the file's _typed_0
    assert json.loads(extra) == {"_row_in_file": "9", "_fate_in_file": "gone", "_Typed_0_in_file": "x"}


def test_nested_json_values_are_kept_as_json(tmp_path, con, ingestor):
    folder = tmp_path / "inbox/web"
    folder.mkdir(parents=True)
    (folder / "web-1.jsonl").write_text(
        '{"event_id": "e1", "event_time": "2026-01-01T00:00:00Z", "anonymous_id": "c1", '
        '"items": [{"sku": "A1", "qty": 2}], "context": {"page": "/x"}}\n'
    )
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "web")
    assert result.rows_loaded == 1
    extra = json.loads(con.execute("SELECT extra FROM raw_web").fetchall()[0][0])
    assert json.loads(extra["items"]) == [{"sku": "A1", "qty": 2}]
    assert json.loads(extra["context"]) == {"page": "/x"}


def test_a_semicolon_separated_file_is_rejected_with_a_hint(tmp_path, con, ingestor):
    write_csv(tmp_path / "inbox/crm/crm.csv", "crm_id;first_name\nC1;Ann")
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "crm")
    assert result.status == "rejected"
    assert result.error == (
        "crm/crm.csv: missing required column 'crm_id'; its header is one column: columns must be separated by commas"
    )


def test_json_lines_that_do_not_parse_are_quarantined_and_the_rest_loads(tmp_path, con, ingestor):
    folder = tmp_path / "inbox/consent"
    folder.mkdir(parents=True)
    good = '{{"consent_id": "{}", "event_time": "2026-01-01T00:00:00Z", "purpose": "email_marketing", '
    good += '"status": "granted", "email": "a@b.com", "extra/key": 1}}'
    (folder / "consent-1.jsonl").write_text(
        "\n".join([good.format("k1"), "not json", "", "[1, 2]", good.format("k2")]) + "\n"
    )
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "consent")
    assert (result.status, result.rows_in, result.rows_loaded, result.rows_quarantined) == ("loaded", 4, 2, 2)
    assert result.balanced
    assert con.execute("SELECT row_number, reason FROM quarantine ORDER BY 1").fetchall() == [
        (2, "malformed JSON line: invalid JSON"),
        (3, "malformed JSON line: not an object"),  # the blank line is not a record
    ]
    rows = con.execute("SELECT consent_id, row_number, extra FROM raw_consent ORDER BY 1").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("k1", 1), ("k2", 4)]
    assert json.loads(rows[0][2]) == {"extra/key": "1"}  # a key beyond the contract is kept


def test_a_file_that_cannot_be_read_at_all_is_retried_not_recorded(tmp_path, con, ingestor):
    (tmp_path / "inbox/store").mkdir(parents=True)
    (tmp_path / "inbox/store/store-1.parquet").write_text("not parquet")
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "store")
    assert result.status == "failed"
    assert result.error.startswith("store/store-1.parquet: cannot be read as parquet: ")
    assert result.error.endswith("(not ingested; tried again next run)") and "\n" not in result.error
    assert ledger(con) == []


def test_parquet_and_json_lines(tmp_path, con, ingestor):
    (tmp_path / "inbox/app").mkdir(parents=True)
    pd.DataFrame(
        {
            "event_id": ["a1", "a2"],
            "event_time": ["2026-02-01T08:00:00Z", "2026-02-01T09:00:00Z"],
            "device_id": ["d1", "d1"],
            "phone": ["07700 900123", None],
            "revenue": ["9.99", None],
        }
    ).to_parquet(tmp_path / "inbox/app/app-1.parquet")
    (tmp_path / "inbox/consent").mkdir(parents=True)
    ok = {
        "consent_id": "k1",
        "event_time": "2026-02-01T08:00:00Z",
        "purpose": "email_marketing",
        "status": "granted",
        "email": "a@b.com",
    }
    lines = [
        ok,
        {
            "consent_id": "k2",
            "event_time": "2026-02-01T08:00:00Z",
            "purpose": "telepathy",
            "status": "granted",
            "email": "a@b.com",
        },
        {
            "consent_id": "k3",
            "event_time": "2026-02-01T08:00:00Z",
            "purpose": "analytics",
            "status": "maybe",
            "email": "a@b.com",
        },
        {"consent_id": "k4", "event_time": "2026-02-01T08:00:00Z", "purpose": "analytics", "status": "granted"},
        # Identifiers that read as nothing: the event could never reach anyone. A withdrawal's mistyped email
        # reaches customers loosely, and an id is read as written.
        {**ok, "consent_id": "k8", "email": "none", "phone": "n/a", "status": "withdrawn"},
        {**ok, "consent_id": "k9", "email": "ptaylor@@virginmedia.com", "status": "withdrawn"},
        {**ok, "consent_id": "k10", "email": "ptaylor@@virginmedia.com"},
        {**ok, "consent_id": "k11", "email": "none", "phone": "07700 900123"},
        {**ok, "consent_id": "k12", "email": "none", "user_id": "n/a"},
        # An email as a JSON list or object: one address is read, two people's are no one subject.
        {**ok, "consent_id": "k5", "email": ["a@b.com", "c@d.org"]},
        {**ok, "consent_id": "k6", "email": ["a@b.com"]},
        {**ok, "consent_id": "k7", "email": {"home": "A@b.com", "work": "a+work@b.com"}},
    ]
    (tmp_path / "inbox/consent/c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    summary = ingestor.ingest_inbox(tmp_path / "inbox")
    by_source = {b.source: b for b in summary.batches}
    assert by_source["app"].rows_loaded == 2
    assert con.execute("SELECT revenue FROM raw_app WHERE event_id = 'a1'").fetchall()[0][0] == Decimal("9.99")
    assert by_source["consent"].rows_loaded == 6
    reasons = sorted(r for (r,) in con.execute("SELECT reason FROM quarantine WHERE source = 'consent'").fetchall())
    assert reasons == [
        "email names several addresses",
        "no readable subject identifier",
        "no readable subject identifier",
        "no subject identifier",
        "unknown purpose",
        "unknown status",
    ]
    quarantined = con.execute(
        "SELECT raw->>'consent_id' FROM quarantine WHERE reason = 'no readable subject identifier' ORDER BY 1"
    ).fetchall()
    assert quarantined == [("k10",), ("k8",)]


def test_same_content_is_never_ingested_twice(tmp_path, con, ingestor):
    path = write_csv(tmp_path / "inbox/crm/a.csv", "crm_id,first_name\nC1,Ann")
    ingestor.ingest_inbox(tmp_path / "inbox")
    # The same content under another name is the same batch.
    write_csv(tmp_path / "inbox/crm/a-copy.csv", path.read_text())
    again = ingestor.ingest_inbox(tmp_path / "inbox")
    assert [b.status for b in again.batches] == ["skipped", "skipped"]
    assert con.execute("SELECT count(*) FROM raw_crm").fetchall()[0][0] == 1
    assert len(ledger(con)) == 1


def test_progress_names_each_new_file_and_counts_the_skipped_ones(tmp_path, con):
    lines: list[str] = []
    ingestor = Ingestor(con, SECRET, region="GB", progress=lines.append)
    write_csv(tmp_path / "inbox/crm/a.csv", "crm_id,first_name\nC1,Ann")
    write_csv(tmp_path / "inbox/crm/b.csv", "crm_id,first_name\nC2,Bob")
    ingestor.ingest_source(tmp_path / "inbox", "crm")
    write_csv(tmp_path / "inbox/crm/c.csv", "crm_id,first_name\nC3,Cy")
    lines.clear()
    ingestor.ingest_source(tmp_path / "inbox", "crm")
    assert lines == [
        "crm/c.csv: loaded, 1 loaded, 0 quarantined, 0 suppressed",
        "crm: 2 files already ingested, skipped",
    ]


def test_unreadable_file_fails_with_one_line_and_others_continue(tmp_path, con, ingestor):
    (tmp_path / "inbox/web").mkdir(parents=True)
    (tmp_path / "inbox/web/broken.parquet").write_bytes(b"this is not parquet")
    write_csv(tmp_path / "inbox/web/ok.csv", "event_id,event_time,anonymous_id\ne1,2026-01-01,c1")
    broken, ok = ingestor.ingest_source(tmp_path / "inbox", "web")
    assert broken.status == "failed" and broken.error.startswith("web/broken.parquet: cannot be read as parquet")
    assert "\n" not in broken.error
    assert ok.rows_loaded == 1


def test_suppressed_subjects_are_dropped_and_counted(tmp_path, con, ingestor):
    con.execute(
        "INSERT INTO suppression_list VALUES ('email_key', ?, 'R1', now()), ('phone_e164', ?, 'R1', now())",
        [
            identifier_hash(SECRET, "email_key", "annlee@gmail.com"),
            identifier_hash(SECRET, "phone_e164", "+447700900123"),
        ],
    )
    write_csv(
        tmp_path / "inbox/store/s.csv",
        """
transaction_id,transaction_time,email,phone
t1,2026-01-01,Ann.Lee+x@googlemail.com,
t2,2026-01-01,,+44 7700 900123
t3,2026-01-01,other@example.com,07700 900999
t4,,Ann.Lee@gmail.com,
""",
    )
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "store")
    assert (result.rows_loaded, result.rows_suppressed, result.rows_quarantined) == (1, 3, 0)
    assert result.balanced
    assert con.execute("SELECT transaction_id FROM raw_store").fetchall() == [("t3",)]
    assert con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0] == 0  # no copy of an erased row


def test_every_source_has_its_required_columns_declared():
    for spec in SOURCE_SPECS.values():
        assert spec.key in spec.required
        assert set(spec.required) <= set(spec.columns)


def test_suppression_reaches_malformed_lines_and_rejected_files(tmp_path, con, ingestor):
    suppress(con, "email_key", "annlee@gmail.com")
    write_csv(
        tmp_path / "inbox/web/w.csv",
        """
event_id,event_time,anonymous_id,email
e1,2026-01-01,c1,ann.lee@gmail.com,surplus
e2,2026-01-01,c2,bob@example.com,surplus
e3,2026-01-01,c3,
""",
    )
    write_csv(tmp_path / "inbox/store/no-time.csv", "transaction_id,email\nt1,Ann.Lee@gmail.com\nt2,bob@example.com")
    summary = ingestor.ingest_inbox(tmp_path / "inbox", sources=("web", "store"))
    web, store = summary.batches
    assert (web.rows_in, web.rows_loaded, web.rows_quarantined, web.rows_suppressed) == (3, 1, 1, 1)
    assert (store.status, store.rows_quarantined, store.rows_suppressed) == ("rejected", 1, 1)
    assert web.balanced and store.balanced
    raw = " ".join(r for (r,) in con.execute("SELECT raw FROM quarantine").fetchall()).lower()
    assert "ann" not in raw and raw.count("bob@example.com") == 2


def test_a_file_already_hashed_is_not_read_again_unless_it_changed(tmp_path, con, ingestor, monkeypatch):
    import cdp.ingest

    read: list[str] = []
    hash_file = cdp.ingest.content_hash
    monkeypatch.setattr(cdp.ingest, "content_hash", lambda path: read.append(path.name) or hash_file(path))
    path = write_csv(tmp_path / "inbox/crm/a.csv", "crm_id,first_name\nC1,Ann")
    write_csv(tmp_path / "inbox/crm/b.csv", "crm_id,first_name\nC2,Bob")
    ingestor.ingest_inbox(tmp_path / "inbox")
    assert read == ["a.csv", "b.csv"]
    read.clear()
    assert [b.status for b in ingestor.ingest_inbox(tmp_path / "inbox").batches] == ["skipped", "skipped"]
    assert read == []
    # Rewritten in place (same size, even): read again, and its new content is a new batch.
    write_csv(path, "crm_id,first_name\nC3,Cyd")
    assert [b.status for b in ingestor.ingest_inbox(tmp_path / "inbox").batches] == ["loaded", "skipped"]
    assert read == ["a.csv"]
    assert con.execute("SELECT count(*) FROM raw_crm").fetchall()[0][0] == 3


def test_a_json_line_that_is_not_an_object_costs_that_line_only(tmp_path, con, ingestor):
    folder = tmp_path / "inbox/app"
    folder.mkdir(parents=True)
    good = '{{"event_id": "{}", "event_time": "2026-01-01T00:00:00Z", "device_id": "d1"}}'
    (folder / "a.jsonl").write_text("\n".join([good.format("a1"), "[1, 2]", '"text"', good.format("a2")]) + "\n")
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "app")
    assert (result.status, result.rows_in, result.rows_loaded, result.rows_quarantined) == ("loaded", 4, 2, 2)
    assert con.execute("SELECT DISTINCT reason FROM quarantine").fetchall() == [("malformed JSON line: not an object",)]


def test_suppression_reaches_malformed_lines_with_crlf_endings_and_cut_json(tmp_path, con, ingestor):
    suppress(con, "email_key", "annlee@gmail.com")
    web = tmp_path / "inbox/web/w.csv"
    web.parent.mkdir(parents=True)
    web.write_bytes(
        b"event_id,event_time,anonymous_id,email\r\n"
        b"e1,2026-01-01,c1,bob@example.com\r\n"
        b"e2,2026-01-01,c2,Ann.Lee@gmail.com,surplus\r\n"
        b"e3,2026-01-01,c3,bob@example.com,surplus\r\n"
    )
    app = tmp_path / "inbox/app/a.jsonl"
    app.parent.mkdir(parents=True)
    app.write_text(
        '{"event_id": "p1", "event_time": "2026-01-01T00:00:00Z", "device_id": "d1"}\n'
        '{"event_id": "p2", "event_time": "2026-01-01T00:00:00Z", "device_id": "d2", "email": "ann.lee@gmail.com",\n'
        '{"event_id": "p3", "event_time": "2026-01-01T00:00:00Z", "device_id": "d3", "email": "bob@example.com",\n'
    )
    web_result, app_result = ingestor.ingest_inbox(tmp_path / "inbox", sources=("web", "app")).batches
    assert (web_result.rows_loaded, web_result.rows_quarantined, web_result.rows_suppressed) == (1, 1, 1)
    assert (app_result.rows_loaded, app_result.rows_quarantined, app_result.rows_suppressed) == (1, 1, 1)
    assert web_result.balanced and app_result.balanced
    raw = " ".join(r for (r,) in con.execute("SELECT raw FROM quarantine").fetchall()).lower()
    assert "ann" not in raw and raw.count("bob@example.com") == 2


def test_an_erased_email_with_a_trailing_tab_is_suppressed(tmp_path, con, ingestor):
    suppress(con, "email_key", "ann.lee@fastmail.co.uk")
    path = tmp_path / "inbox/crm/c.csv"
    path.parent.mkdir(parents=True)
    path.write_text('crm_id,first_name,email\nC10,Ann,"ann.lee@fastmail.co.uk\t"\nC11,Bob,"\u00a0bob@fastmail.co.uk"\n')
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "crm")
    assert (result.rows_loaded, result.rows_suppressed) == (1, 1)
    assert con.execute("SELECT crm_id FROM raw_crm").fetchall() == [("C11",)]


def test_a_quote_left_open_mid_file_costs_its_line_not_the_lines_after_it(tmp_path, con, ingestor):
    write_csv(
        tmp_path / "inbox/web/q.csv",
        """
event_id,event_time,anonymous_id,page_url
q1,2024-02-01T10:00:00Z,c1,"unterminated
q2,2024-02-01T10:00:00Z,c2,/ok

q3,2024-02-01T10:00:00Z,c3,"/a,b"
q4,2024-02-01T10:00:00Z,c4,"x"
""",
    )
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "web")
    assert (result.rows_in, result.rows_loaded, result.rows_quarantined) == (4, 3, 1) and result.balanced
    assert con.execute("SELECT row_number, reason FROM quarantine").fetchall() == [
        (1, "malformed CSV line: unterminated quote")
    ]
    loaded = con.execute("SELECT event_id, page_url, row_number FROM raw_web ORDER BY 1").fetchall()
    assert loaded == [("q2", "/ok", 2), ("q3", "/a,b", 3), ("q4", "x", 4)]


def test_the_same_bytes_in_two_sources_are_two_batches(tmp_path, con, ingestor):
    for name in ("app/empty.csv", "consent/empty.jsonl", "crm/empty.csv"):
        (tmp_path / "inbox" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "inbox" / name).write_bytes(b"")
    summary = ingestor.ingest_inbox(tmp_path / "inbox")
    assert len({b.batch_id for b in summary.batches}) == 3  # no primary-key clash between sources


def test_a_quote_left_open_at_the_start_of_a_line_costs_that_line_only(tmp_path, con, ingestor):
    # DuckDB reads this file without complaint, but as one rejected "line" from Q2 to the end.
    write_csv(
        tmp_path / "inbox/store/q.csv",
        'transaction_id,transaction_time,amount\nQ1,2024-01-01T10:00:00Z,1\n"Q2,2024-01-01T10:00:00Z,2\n'
        "Q3,2024-01-01T10:00:00Z,3\nQ4,2024-01-01T10:00:00Z,4\n",
    )
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "store")
    assert (result.rows_in, result.rows_loaded, result.rows_quarantined) == (4, 3, 1) and result.balanced
    assert con.execute("SELECT row_number FROM quarantine").fetchall() == [(2,)]
    loaded = con.execute("SELECT transaction_id FROM raw_store ORDER BY 1").fetchall()
    assert loaded == [("Q1",), ("Q3",), ("Q4",)]


def test_a_byte_order_mark_does_not_cost_a_json_lines_file_its_first_record(tmp_path, con, ingestor):
    path = tmp_path / "inbox/web/bom.jsonl"
    path.parent.mkdir(parents=True)
    event = '{{"event_id":"{}","event_time":"2024-01-01T10:00:00Z","anonymous_id":"c1"}}'
    path.write_bytes(("\ufeff" + event.format("e1") + "\n" + event.format("e2") + "\n").encode())
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "web")
    assert (result.rows_in, result.rows_loaded, result.rows_quarantined) == (2, 2, 0)
    assert con.execute("SELECT event_id FROM raw_web ORDER BY 1").fetchall() == [("e1",), ("e2",)]


def test_amounts_are_read_as_people_and_tills_write_them(tmp_path, con, ingestor):
    written = {
        "t1": ("12,50", "12.50"),  # a decimal comma, not 1250
        "t2": ("1.234,56", "1234.56"),
        "t3": ("1,234.56", "1234.56"),
        "t4": ("(15.00)", "-15.00"),  # accounting negative: a refund
        "t5": ("€ 9,99", "9.99"),
        "t6": ("12.50 EUR", "12.50"),
        "t7": ("£12.50", "12.50"),
        "t8": ("1e3", None),  # not guessed at: kept as written
    }
    lines = "".join(f'{t},2024-01-01T10:00:00Z,"{amount}"\n' for t, (amount, _) in written.items())
    write_csv(tmp_path / "inbox/store/s.csv", "transaction_id,transaction_time,amount\n" + lines)
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "store")
    assert result.rows_loaded == len(written)
    rows = con.execute("SELECT transaction_id, amount, extra FROM raw_store").fetchall()
    got = {t: (str(amount) if amount is not None else None) for t, amount, _ in rows}
    assert got == {t: expected for t, (_, expected) in written.items()}
    assert json.loads(dict((t, e) for t, _, e in rows)["t8"]) == {"_unparsed_amount": "1e3"}


def test_a_folder_inside_a_source_folder_is_named_and_hidden_files_are_no_batches(tmp_path, con, ingestor):
    write_csv(tmp_path / "inbox/web/2026-11/w.csv", "event_id,event_time,anonymous_id\ne1,2026-01-01,c1")
    write_csv(tmp_path / "inbox/web/._w.csv", "event_id,event_time,anonymous_id\ne2,2026-01-01,c2")  # macOS fork
    write_csv(tmp_path / "inbox/web/ok.csv", "event_id,event_time,anonymous_id\ne3,2026-01-01,c3")
    results = ingestor.ingest_source(tmp_path / "inbox", "web")
    assert [(r.file, r.status) for r in results] == [("web/ok.csv", "loaded"), ("web/2026-11/", "failed")]
    assert "a folder inside a source folder; its files are not read" in results[1].error
    assert con.execute("SELECT event_id FROM raw_web").fetchall() == [("e3",)]


def test_a_receipt_number_another_store_holds_is_quarantined_not_staged_as_a_version(tmp_path, con, ingestor):
    # Staging keeps one version of each transaction_id: a second store numbering its receipts alike would
    # silently replace the first store's receipt (or lose its own). Its rows are quarantined instead.
    write_csv(
        tmp_path / "inbox/store/store-1.csv",
        """
transaction_id,transaction_time,store_id,amount
TX1,2026-03-01T10:00:00Z,S001,10.00
TX2,2026-03-01T11:00:00Z,S001,20.00
""",
    )
    ingestor.ingest_source(tmp_path / "inbox", "store")
    write_csv(
        tmp_path / "inbox/store/store-2.csv",
        """
transaction_id,transaction_time,store_id,amount
TX1,2026-03-02T10:00:00Z,S002,99.00
TX2,2026-03-01T11:00:00Z, S001 ,21.00
TX1,2026-03-01T10:00:00Z,,10.00
TX3,2026-03-02T12:00:00Z,S003,30.00
TX3,2026-03-02T13:00:00Z,S004,40.00
TX3,2026-03-02T14:00:00Z,S003,31.00
TX4,yesterday,S005,50.00
TX4,2026-03-02T15:00:00Z,S006,60.00
""",
    )
    results = ingestor.ingest_source(tmp_path / "inbox", "store")
    (second,) = [r for r in results if r.file.endswith("store-2.csv")]
    assert (second.rows_in, second.rows_loaded, second.rows_quarantined) == (8, 5, 3)
    assert second.balanced
    assert second.describe() == (
        "store/store-2.csv: loaded, 5 loaded, 3 quarantined (2 transaction_id already used by another store_id, "
        "1 unparseable transaction_time), 0 suppressed"
    )
    reasons = con.execute("SELECT row_number, reason FROM quarantine ORDER BY 1").fetchall()
    assert reasons == [
        (1, "transaction_id already used by another store_id"),  # TX1 is S001's receipt
        (5, "transaction_id already used by another store_id"),  # TX3 is S003's: its first row in the file
        (7, "unparseable transaction_time"),  # a row that does not load holds no number: TX4 is S006's
    ]
    # A later version from the same store (spaces aside) and a version naming no store are versions.
    loaded = con.execute("SELECT transaction_id, amount FROM raw_store ORDER BY row_number, batch_id").fetchall()
    assert sorted((t, str(a)) for t, a in loaded) == sorted(
        [("TX1", "10.00"), ("TX2", "20.00"), ("TX2", "21.00"), ("TX1", "10.00"), ("TX3", "30.00"), ("TX3", "31.00"),
         ("TX4", "60.00")]
    )  # fmt: skip


def test_an_event_id_another_cookie_or_device_holds_is_quarantined_not_staged_as_a_version(tmp_path, con, ingestor):
    # An SDK that reuses event ids (a broken random generator, a copied install) would make another cookie's
    # or device's event replace the first one's staged row. The first holder keeps the id; a device id in
    # capitals is the same device as in lower case, and a resent event from the same cookie is a version.
    device = "6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b"
    write_csv(
        tmp_path / "inbox/web/web-1.csv",
        """
event_id,event_time,anonymous_id,event_type
E1,2026-03-01T10:00:00Z,cookie-a,page_view
E2,2026-03-01T10:05:00Z,cookie-a,page_view
""",
    )
    write_csv(
        tmp_path / "inbox/web/web-2.csv",
        """
event_id,event_time,anonymous_id,event_type
E1,2026-03-02T09:00:00Z,cookie-b,purchase
E2,2026-03-01T10:05:00Z, cookie-a ,add_to_cart
""",
    )
    (tmp_path / "inbox/app").mkdir(parents=True)
    (tmp_path / "inbox/app/app-1.jsonl").write_text(
        json.dumps({"event_id": "A1", "event_time": "2026-03-01T10:00:00Z", "device_id": device.upper()})
        + "\n"
        + json.dumps({"event_id": "A1", "event_time": "2026-03-01T10:00:01Z", "device_id": device})
        + "\n"
        + json.dumps({"event_id": "A1", "event_time": "2026-03-01T10:00:02Z", "device_id": "another-phone"})
        + "\n"
    )
    ingestor.ingest_source(tmp_path / "inbox", "web")
    (app,) = ingestor.ingest_source(tmp_path / "inbox", "app")
    assert app.describe() == (
        "app/app-1.jsonl: loaded, 2 loaded, 1 quarantined (1 event_id already used by another device_id), 0 suppressed"
    )
    reasons = con.execute("SELECT source, file, row_number, reason FROM quarantine ORDER BY ALL").fetchall()
    assert reasons == [
        ("app", "app/app-1.jsonl", 3, "event_id already used by another device_id"),
        ("web", "web/web-2.csv", 1, "event_id already used by another anonymous_id"),
    ]
    loaded = con.execute("SELECT event_id, trim(anonymous_id), event_type FROM raw_web ORDER BY ALL").fetchall()
    assert loaded == [
        ("E1", "cookie-a", "page_view"), ("E2", "cookie-a", "add_to_cart"), ("E2", "cookie-a", "page_view")
    ]  # fmt: skip


def test_a_suppressed_loyalty_card_is_found_however_its_letters_are_written(tmp_path, con, ingestor):
    # Erasures hash card numbers as staging reads them (letters in capitals); erasures made before that
    # hashed them as written. Both keep their subject out, in a row or in a malformed line.
    suppress(con, "loyalty_id", "LOY-8")  # an erasure's hash now
    suppress(con, "loyalty_id", "loy-9")  # an earlier erasure's, of the card as written then
    write_csv(
        tmp_path / "inbox/store/s.csv",
        """
transaction_id,transaction_time,loyalty_id
t1,2026-01-01,loy-8
t2,2026-01-01, Loy-8
t3,2026-01-01,loy-9
t4,2026-01-01,LOY-10
t5,2026-01-01,loy-8,one column too many
""",
    )
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "store")
    assert (result.rows_loaded, result.rows_suppressed, result.rows_quarantined) == (1, 4, 0)
    assert con.execute("SELECT transaction_id FROM raw_store").fetchall() == [("t4",)]


def test_a_suppressed_uuid_is_found_whatever_the_case_of_its_letters(tmp_path, con, ingestor):
    # Erasures hash a UUID in lower case, as staging reads it; erasures made before that hashed it as written
    # (iOS writes device ids in capitals). Both keep their subject out, in a row or in a malformed line.
    erased_now, erased_before = "6f9619ff-8b86-d011-b42d-00c04fc964ff", "0B1E4C2A-77D3-4F0E-9A51-3C2D9E8F7A10"
    suppress(con, "device_id", erased_now)
    suppress(con, "device_id", erased_before)
    write_csv(
        tmp_path / "inbox/app/a.csv",
        f"""
event_id,event_time,device_id
e1,2026-01-01,{erased_now.upper()}
e2,2026-01-01, {erased_now}
e3,2026-01-01,{erased_before.lower()}
e4,2026-01-01,{erased_before}
e5,2026-01-01,{erased_now.replace("-", "")}
e6,2026-01-01,{erased_before.lower()},one column too many
""",
    )
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "app")
    assert (result.rows_loaded, result.rows_suppressed, result.rows_quarantined) == (1, 5, 0)
    assert con.execute("SELECT event_id FROM raw_app").fetchall() == [("e5",)]  # not a UUID's standard form


def test_a_json_key_with_values_of_several_types_is_read_as_their_text(tmp_path, con, ingestor):
    """DuckDB types such a key as JSON: its strings were kept with their quotes (an event id '"e-1002"'), and a
    numeric time among ISO times quarantined every row as 'unparseable event_time'."""
    folder = tmp_path / "inbox/app"
    folder.mkdir(parents=True)
    lines = [
        {"event_id": 1001, "event_time": "2026-10-01T10:00:00Z", "device_id": "D1", "revenue": 12.5},
        {"event_id": "e-1002", "event_time": "2026-10-01T11:00:00Z", "device_id": "D1", "revenue": "£20.00"},
        {"event_id": "e-1003", "event_time": 1_790_000_000, "device_id": {"id": "D2"}, "revenue": None},
    ]
    (folder / "mixed.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "app")
    assert (result.rows_loaded, result.rows_quarantined) == (2, 1)
    rows = con.execute("SELECT event_id, device_id, revenue FROM raw_app ORDER BY event_time").fetchall()
    assert rows == [("1001", "D1", Decimal("12.50")), ("e-1002", "D1", Decimal("20.00"))]
    assert con.execute("SELECT reason FROM quarantine").fetchall() == [("unparseable event_time",)]


@pytest.mark.parametrize("name", ["lines.json", "lines.ndjson"])
def test_json_lines_under_a_json_name_lose_only_their_bad_line(tmp_path, con, ingestor, name):
    folder = tmp_path / "inbox/web"
    folder.mkdir(parents=True)
    good = '{{"event_id": "{}", "event_time": "2026-01-01T00:00:00Z", "anonymous_id": "c1"}}'
    (folder / name).write_text("\n".join([good.format("e1"), good.format("e2")[:-1], good.format("e3")]) + "\n")
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "web")
    assert (result.status, result.rows_loaded, result.rows_quarantined) == ("loaded", 2, 1)


def test_a_json_document_of_one_record_or_an_array_still_loads(tmp_path, con, ingestor):
    folder = tmp_path / "inbox/web"
    folder.mkdir(parents=True)
    record = {"event_id": "e1", "event_time": "2026-01-01T00:00:00Z", "anonymous_id": "c1"}
    (folder / "one.json").write_text(json.dumps(record, indent=2))
    (folder / "many.json").write_text(
        json.dumps([{**record, "event_id": "e2"}, {**record, "event_id": "e3"}], indent=2)
    )
    (folder / "broken.json").write_text("[" + json.dumps(record) + ",\n{")
    results = {r.file.split("/")[-1]: r for r in ingestor.ingest_source(tmp_path / "inbox", "web")}
    assert (results["one.json"].rows_loaded, results["many.json"].rows_loaded) == (1, 2)
    assert results["broken.json"].status == "failed"


def test_a_count_is_a_whole_number_and_an_amounts_currency_fills_an_empty_currency(tmp_path, con, ingestor):
    """try_cast read items '2.5' as 3 and '1e3' as 1000, where a value that does not parse is kept in extra; and
    '12,50 EUR' with no currency loaded as 12.50 of nothing, counted in the profiles' currency."""
    write_csv(
        tmp_path / "inbox/store/store-1.csv",
        """
transaction_id,transaction_time,store_id,amount,currency,items
t1,2026-03-01T10:00:00Z,s1,"12,50 EUR",,2.5
t2,2026-03-01T10:00:00Z,s1,£3.00,,1e3
t3,2026-03-01T10:00:00Z,s1,12 USD,EUR,2.0
t4,2026-03-01T10:00:00Z,s1,$5.00,,+4
t5,2026-03-01T10:00:00Z,s1,lots EUR,,
""",
    )
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "store")
    assert result.rows_loaded == 5
    rows = con.execute("SELECT transaction_id, amount, currency, items, extra FROM raw_store ORDER BY 1").fetchall()
    assert [r[1:4] for r in rows] == [
        (Decimal("12.50"), "EUR", None),
        (Decimal("3.00"), "GBP", None),
        (Decimal("12.00"), "EUR", 2),  # a currency column given wins
        (Decimal("5.00"), "$", 4),  # '$' is several currencies: kept, a currency not known
        (None, None, None),  # no amount read: no currency taken from it
    ]
    assert [json.loads(r[4]).get("_unparsed_items") for r in rows[:2]] == ["2.5", "1e3"]


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\n \r\n", b"\xff\xfe\n\x00", b"[ ]\n"])
@pytest.mark.parametrize("name", ["web-empty.csv", "web-empty.jsonl", "web-empty.json", "web-empty.parquet"])
def test_an_empty_export_is_an_empty_batch_not_a_rejection(tmp_path, con, ingestor, name, content):
    """A day without rows exported as an empty file was rejected ('missing required column') and reported
    again on every run."""
    folder = tmp_path / "inbox/web"
    folder.mkdir(parents=True)
    (folder / name).write_bytes(content)
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "web")
    assert (result.status, result.rows_in, result.error) == ("loaded", 0, None)
    (again,) = ingestor.ingest_source(tmp_path / "inbox", "web")
    assert again.status == "skipped"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_a_csv_in_utf16_is_read_as_its_text(tmp_path, con, ingestor, encoding):
    """Spreadsheet programs write 'Unicode text' as UTF-16: read as it was, its NUL bytes made the file miss its
    required column and every line one quarantined value, counted wrong."""
    text = "event_id,event_time,anonymous_id,email\ne1,2026-01-01T00:00:00Z,c1,jörg@bücher.de\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    (tmp_path / "inbox/web").mkdir(parents=True)
    (tmp_path / "inbox/web/web-1.csv").write_bytes(data)
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "web")
    assert (result.status, result.rows_in, result.rows_loaded) == ("loaded", 1, 1)
    assert con.execute("SELECT event_id, email FROM raw_web").fetchall() == [("e1", "jörg@bücher.de")]


def test_a_time_with_a_space_before_its_offset_is_read(tmp_path, con, ingestor):
    """'2024-03-02 10:00:00 +0100', as some systems log times, was quarantined as unparseable: a consent
    withdrawal written so did not apply."""
    write_csv(
        tmp_path / "inbox/consent/c.csv",
        """
consent_id,event_time,purpose,status,email
k1,2024-03-02 10:00:00 +0100,email_marketing,withdrawn,a@b.com
k2,2024-03-02 10:00:00 -05:30,email_marketing,withdrawn,a@b.com
k3,2024-03-02 10:00:00 BST,email_marketing,withdrawn,a@b.com
""",
    )
    (result,) = ingestor.ingest_source(tmp_path / "inbox", "consent")
    assert (result.rows_loaded, result.rows_quarantined) == (2, 1)  # BST is a guess: British or Bangladesh
    times = con.execute("SELECT consent_id, event_time FROM raw_consent ORDER BY 1").fetchall()
    assert [(k, str(t)) for k, t in times] == [("k1", "2024-03-02 09:00:00"), ("k2", "2024-03-02 15:30:00")]


def test_generated_unreadable_consent_grants_are_the_rows_quarantined_for_it(tmp_path, con, ingestor):
    """What the generator's summary counts as unreadable consent grants is what ingestion quarantines as naming
    no readable subject (the demo world's consent files)."""
    from cdp.generate import generate_world

    summary = generate_world(tmp_path / "inbox", customers=2_000, seed=7)
    results = ingestor.ingest_source(tmp_path / "inbox", "consent")
    assert sum(r.rows_quarantined for r in results) == summary.malformed["consent"] + summary.unreadable["consent"]
    unread = con.execute("SELECT count(*) FROM quarantine WHERE reason = 'no readable subject identifier'").fetchall()
    assert unread == [(summary.unreadable["consent"],)]
