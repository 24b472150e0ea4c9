"""The synthetic world generator (cdp.generate): file layout, determinism, ground truth, messiness.

Reads the generated files back with pandas (and compares values with the pure standardisers of
identity.standardise); ingestion, the store and identity resolution are not touched.
"""

from __future__ import annotations

import csv
import re
from difflib import SequenceMatcher
from pathlib import Path

import pandas as pd
import pytest

from cdp.errors import CdpError
from cdp.generate import COLUMNS, KEY, NICKNAMES, PURPOSES, REQUIRED, UNIT, GenerateSummary, generate_world
from identity.standardise import email_match_key, normalise_name, normalise_phone, normalise_postcode

CUSTOMERS = 500
TIME_COLUMNS = {"web": "event_time", "app": "event_time", "store": "transaction_time", "consent": "event_time"}
PLACEHOLDERS = {"-1", "null", "NULL", "000000", "0", "test@test.com", "noemail@noemail.com", "none@none.com"}


def read_file(path: Path) -> pd.DataFrame:
    """One batch file as text, missing values as ''."""
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    if path.suffix == ".jsonl":
        frame = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
    else:
        frame = pd.read_parquet(path)
    return frame.astype(object).where(frame.notna(), "").astype(str)


def read_source(inbox: Path, source: str) -> pd.DataFrame:
    frames = [read_file(p).assign(_file=p.name) for p in sorted((inbox / source).iterdir())]
    return pd.concat(frames, ignore_index=True).fillna("")


def well_formed(source: str, frame: pd.DataFrame) -> pd.Series:
    ok = pd.Series(True, index=frame.index)
    for column in REQUIRED[source]:
        ok &= frame[column].str.strip() != ""
    if source in TIME_COLUMNS:
        parsed = pd.to_datetime(frame[TIME_COLUMNS[source]], format="ISO8601", errors="coerce", utc=True)
        ok &= parsed.notna()
    return ok


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[GenerateSummary, Path, Path]:
    out = tmp_path_factory.mktemp("omni") / "inbox"
    summary = generate_world(out, customers=CUSTOMERS, seed=11)
    return summary, out, Path(str(out) + "-truth")


@pytest.fixture(scope="module")
def sources(world) -> dict[str, pd.DataFrame]:
    _, inbox, _ = world
    return {s: read_source(inbox, s) for s in ("web", "app", "store", "crm", "consent")}


@pytest.fixture(scope="module")
def truth(world) -> dict[str, pd.DataFrame]:
    _, _, folder = world
    return {
        name: pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False)
        for name in ("records", "consent", "people")
    }


@pytest.fixture(scope="module")
def person_of(truth) -> dict[tuple[str, str], str]:
    r = truth["records"]
    return dict(zip(zip(r["source"], r["source_record_id"], strict=True), r["person_id"], strict=True))


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- layout and determinism ---------------------------------------------------------------------------


def test_same_seed_writes_identical_bytes_and_another_seed_differs(tmp_path):
    a = generate_world(tmp_path / "a" / "inbox", customers=120, seed=5)
    b = generate_world(tmp_path / "b" / "inbox", customers=120, seed=5)
    c = generate_world(tmp_path / "c" / "inbox", customers=120, seed=6)
    files_a, files_b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    assert files_a == files_b
    assert any(name.endswith(".parquet") for name in files_a)  # parquet output is deterministic too
    files_c = all_files(tmp_path / "c")
    assert files_a["inbox-truth/people.csv"] != files_c["inbox-truth/people.csv"]
    assert a.rows == b.rows and a.rows != c.rows


def test_every_source_has_batches_with_all_contract_columns(world, sources):
    summary, inbox, _ = world
    formats = set()
    extras = set()
    for source, columns in COLUMNS.items():
        files = sorted((inbox / source).iterdir())
        assert len(files) >= 3, source
        assert len({f.name for f in files}) == len(files)
        for path in files:
            assert path.name.startswith(f"{source}-")
            formats.add(path.suffix)
            header = list(read_file(path).columns)
            assert set(columns) <= set(header), (path.name, set(columns) - set(header))
            extras |= set(header) - set(columns)
        assert summary.files[source] == len(files)
        assert summary.rows[source] == len(sources[source])
    assert formats == {".csv", ".parquet", ".jsonl"}
    assert extras == {"user_agent", "till_id", "source_system"}  # in a few files: ingestion must keep them


def test_rows_per_person_are_realistic(world):
    summary, _, _ = world
    per_person = summary.total_rows / CUSTOMERS
    assert 10 <= per_person <= 15
    assert summary.rows["web"] > summary.rows["app"] > summary.rows["crm"]
    assert 1.0 <= summary.records["crm"] / CUSTOMERS <= 1.4
    assert summary.people == CUSTOMERS
    text = str(summary)
    assert f"{CUSTOMERS:,} people" in text and str(summary.inbox) in text and "malformed" in text


# --- ground truth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["web", "app", "store", "crm"])
def test_truth_covers_every_well_formed_record_with_its_unit(world, sources, truth, source):
    summary, _, _ = world
    frame = sources[source]
    good = frame[well_formed(source, frame)]
    # CRM contacts re-exported in a later batch repeat their key: the truth holds one row per key
    latest = good.drop_duplicates(KEY[source], keep="last")
    records = truth["records"][truth["records"]["source"] == source]
    assert records["source_record_id"].is_unique
    assert set(records["source_record_id"]) == set(latest[KEY[source]])
    merged = records.merge(latest, left_on="source_record_id", right_on=KEY[source])
    assert (merged["unit_id"] == source + ":" + merged[UNIT[source]]).all()
    assert summary.records[source] == len(records)
    assert set(records["connectable"]) == {"true", "false"}
    assert set(records["person_id"]) <= set(truth["people"]["person_id"])


@pytest.mark.parametrize("source", ["web", "app", "store", "crm", "consent"])
def test_malformed_rows_are_counted_and_left_out_of_the_truth(world, sources, truth, source):
    summary, _, _ = world
    frame = sources[source]
    bad = frame[~well_formed(source, frame)]
    assert len(bad) == summary.malformed[source] >= 1
    if source != "consent":
        ids = set(truth["records"]["source_record_id"])
        assert not (set(bad[KEY[source]]) - {""}) & ids
    assert summary.malformed_rows == sum(summary.malformed.values())


def test_consent_grants_naming_no_one_readably_are_counted(tmp_path):
    """The summary counts the well-formed grants whose only identifier is a mistyped email (``@@``), which
    ingestion quarantines, so that its totals match the run's (the demo world has five)."""
    summary = generate_world(tmp_path / "inbox", customers=2_000, seed=7)
    consent = read_source(tmp_path / "inbox", "consent")
    consent = consent[well_formed("consent", consent)]
    others = ["phone", "user_id", "crm_id", "loyalty_id", "device_id", "anonymous_id"]
    alone = (consent[others] == "").all(axis=1) & consent["email"].str.contains("@@", regex=False)
    grants = int((alone & (consent["status"] != "withdrawn")).sum())
    assert summary.unreadable["consent"] == summary.unreadable_rows == grants >= 1
    assert int((alone & (consent["status"] == "withdrawn")).sum()) >= 1  # reached by the loose key: not counted
    assert f"and {grants} unreadable consent grants" in str(summary)
    assert f"{grants} grants whose only identifier is a mistyped email" in str(summary)


def test_crm_reexports_repeat_a_key_with_a_later_update(sources):
    crm = sources["crm"]
    crm = crm[crm["crm_id"] != ""]
    repeated = crm[crm.duplicated("crm_id", keep=False)]
    assert len(repeated) >= 2
    first = repeated.drop_duplicates("crm_id", keep="first").set_index("crm_id")["updated_at"]
    last = repeated.drop_duplicates("crm_id", keep="last").set_index("crm_id")["updated_at"]
    assert (last > first[last.index]).all()


def test_people_truth_describes_households(truth):
    people = truth["people"]
    assert people["person_id"].is_unique and len(people) == CUSTOMERS
    households = people.groupby("household_id")
    assert (households.size() > 1).any()
    assert (households["postcode"].nunique() == 1).all()  # one address per household
    phones = people["phones"].str.split(";").explode()
    phones = phones[phones != ""]
    assert all(p.startswith("+44") for p in phones)
    assert phones.duplicated().any()  # a landline shared by a household
    emails = people["emails"].str.split(";").explode()
    assert emails[emails != ""].duplicated().any()  # a family email


def _utc(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, format="ISO8601", utc=True)


def _phone_owners(people: pd.DataFrame) -> dict[str, set[str]]:
    owners: dict[str, set[str]] = {}
    for pid, phones in zip(people["person_id"], people["phones"], strict=True):
        for phone in filter(None, phones.split(";")):
            owners.setdefault(phone, set()).add(pid)
    return owners


def test_consent_truth_is_the_latest_event_per_person_and_purpose(sources, truth):
    consent = truth["consent"]
    assert not consent.duplicated(["person_id", "purpose"]).any()
    assert set(consent["status"]) == {"granted", "withdrawn"}
    assert set(consent["purpose"]) == set(PURPOSES)
    events = sources["consent"]
    events = events[well_formed("consent", events)]
    app = sources["app"]
    push = app[app["event_type"].isin(["push_opt_in", "push_opt_out"]) & well_formed("app", app)]
    # every truth row is an event in the files: a consent event or an app push opt-in/out
    from_consent = set(zip(events["purpose"], events["status"], _utc(events["event_time"]), strict=True))
    push_status = push["event_type"].map({"push_opt_in": "granted", "push_opt_out": "withdrawn"})
    from_app = set(zip(["push_marketing"] * len(push), push_status, _utc(push["event_time"]), strict=True))
    rows = list(zip(consent["purpose"], consent["status"], _utc(consent["event_time"]), strict=True))
    assert all(r in from_consent or r in from_app for r in rows)
    assert any(r in from_app and r not in from_consent for r in rows)
    # and it is the latest: no event through a person's own mobile is later than their truth row
    owners = _phone_owners(truth["people"])
    latest = consent.assign(t=_utc(consent["event_time"])).set_index(["person_id", "purpose"])["t"]
    checked = 0
    for phone, purpose, when in zip(events["phone"], events["purpose"], _utc(events["event_time"]), strict=True):
        people = owners.get(normalise_phone(phone, "GB") or "", set())
        if len(people) == 1:
            assert latest[(next(iter(people)), purpose)] >= when
            checked += 1
    assert checked >= 20


def test_consent_events_use_every_source_and_identifier(sources):
    events = sources["consent"]
    events = events[well_formed("consent", events)]
    assert set(events["source"]) == {"web_banner", "preference_centre", "app_prompt", "store_form", "crm"}
    assert set(events["status"]) == {"granted", "withdrawn"}
    identifiers = ["email", "phone", "user_id", "crm_id", "loyalty_id", "device_id", "anonymous_id"]
    assert (events[identifiers] != "").any(axis=1).all()
    for column in identifiers:
        assert (events[column] != "").any(), column
    assert set(events.loc[events["phone"] != "", "source"]) == {"store_form"}
    assert set(events.loc[events["device_id"] != "", "source"]) == {"app_prompt"}


def test_some_people_withdraw_at_a_store_with_their_phone_after_a_crm_grant(sources, truth):
    events = sources["consent"]
    events = events[well_formed("consent", events)]
    by_phone = _phone_owners(truth["people"])
    till = events[
        (events["source"] == "store_form")
        & (events["status"] == "withdrawn")
        & (events["purpose"] == "email_marketing")
        & (events["email"] == "")
    ]
    state = truth["consent"].set_index(["person_id", "purpose"])["status"]
    found = 0
    for phone in till["phone"]:
        owners = by_phone.get(normalise_phone(phone, "GB"), set())
        if len(owners) == 1 and state.get((next(iter(owners)), "email_marketing")) == "withdrawn":
            found += 1
    assert found >= 1
    crm_grants = events[(events["source"] == "crm") & (events["status"] == "granted") & (events["email"] != "")]
    assert len(crm_grants) >= 1


def test_anonymous_cookies_are_not_connectable_and_logins_are(sources, truth):
    web = sources["web"]
    web = web[well_formed("web", web)].copy()
    web["uid"] = web["user_id"].str.strip()
    web["has_id"] = ((web["uid"] != "") & ~web["uid"].isin(PLACEHOLDERS)) | (web["email"] != "")
    units = web.groupby("anonymous_id")["has_id"].any()
    connectable = truth["records"].drop_duplicates("unit_id").set_index("unit_id")["connectable"]
    anonymous = ["web:" + a for a in units[~units].index]
    assert anonymous and (connectable[anonymous] == "false").all()
    assert (connectable[["web:" + a for a in units[units].index]] == "true").mean() > 0.5


def test_cookies_have_events_before_their_login(sources):
    web = sources["web"]
    web = web[well_formed("web", web)].copy()
    web["t"] = pd.to_datetime(web["event_time"], format="ISO8601", utc=True)
    web["logged"] = web["user_id"].str.strip().str.startswith("u")
    first_login = web[web["logged"]].groupby("anonymous_id")["t"].min()
    before = web[web["anonymous_id"].isin(first_login.index) & ~web["logged"]]
    before = before[before["t"] < before["anonymous_id"].map(first_login)]
    assert before["anonymous_id"].nunique() >= 5
    assert (before["user_id"].str.strip().isin(PLACEHOLDERS | {""})).all()
    assert set(web["event_type"]) <= {
        "page_view", "product_view", "add_to_cart", "checkout", "purchase", "sign_up", "newsletter_signup", "login",
    }  # fmt: skip
    assert {"login", "newsletter_signup", "purchase"} <= set(web["event_type"])


def test_app_has_push_opt_in_and_out(sources):
    app = sources["app"]
    types = set(app["event_type"])
    assert {"push_opt_in", "push_opt_out", "login", "app_open"} <= types
    assert types <= {"app_open", "login", "product_view", "add_to_cart", "purchase", "push_opt_in", "push_opt_out"}


# --- messiness ---------------------------------------------------------------------------------------


def test_phones_come_in_national_and_international_formats_and_all_parse(sources):
    phones = pd.concat([sources[s]["phone"] for s in ("app", "store", "crm", "consent")])
    phones = phones[phones != ""]
    assert phones.str.match(r"^0\d{3,4} \d").any()  # 07700 900123 / 020 7946 0123
    assert phones.str.match(r"^0\d{10}$").any()
    assert phones.str.startswith("+44").any() and phones.str.startswith("0044").any()
    assert phones.str.match(r"^0(20|1\d1) ").any()  # a landline
    real = phones[~phones.isin(PLACEHOLDERS | {"00000000000"})]
    assert all(normalise_phone(p, "GB") for p in real)
    assert not any(normalise_phone(p, "GB") for p in phones[phones.isin({"00000000000", "0", "-1"})])


def test_emails_have_gmail_dots_tags_case_and_spaces(sources, truth, person_of):
    crm, web = sources["crm"], sources["web"]
    emails = pd.concat([crm["email"], web["email"], sources["store"]["email"], sources["app"]["email"]])
    emails = emails[emails != ""]
    assert emails.str.contains(r"\+", regex=True).any()
    assert emails.str.contains("googlemail.com").any()
    assert (emails != emails.str.strip()).any() and (emails != emails.str.lower()).any()
    assert emails.isin(PLACEHOLDERS).any()
    # an address written with different dots than the person's own, same Gmail mailbox
    people = truth["people"].set_index("person_id")["emails"]
    dotted = 0
    for _, row in web[web["email"].str.contains("gmail")].iterrows():
        pid = person_of.get(("web", row["event_id"]))
        own = [e for e in people.get(pid, "").split(";") if e]
        written = row["email"].strip().lower().split("+")[0].split("@")[0]
        if any(email_match_key(e) == email_match_key(row["email"]) and e.split("@")[0] != written for e in own):
            dotted += 1
    assert dotted >= 1


def test_same_person_appears_under_several_emails(sources, person_of):
    crm = sources["crm"]
    crm = crm[(crm["crm_id"] != "") & (crm["email"] != "")]
    keys = pd.DataFrame(
        {"person": [person_of.get(("crm", c)) for c in crm["crm_id"]], "key": crm["email"].map(email_match_key)}
    ).dropna()
    web = sources["web"]
    web = web[web["email"] != ""]
    keys = pd.concat(
        [
            keys,
            pd.DataFrame(
                {
                    "person": [person_of.get(("web", e)) for e in web["event_id"]],
                    "key": web["email"].map(email_match_key),
                }
            ).dropna(),
        ]  # fmt: skip
    )
    keys = keys[~keys["key"].isin(PLACEHOLDERS)]
    assert (keys.drop_duplicates().groupby("person")["key"].nunique() >= 2).any()


def test_names_are_messy_with_nicknames_typos_and_case(sources, truth, person_of):
    crm = sources["crm"]
    crm = crm[crm["crm_id"] != ""]
    people = truth["people"].set_index("person_id")
    nick = pd.read_csv(Path(__file__).parents[1] / "identity" / "data" / "nicknames.csv")
    pairs = set(zip(nick["name"], nick["canonical"], strict=True))
    nicknamed = typos = 0
    for cid, first in zip(crm["crm_id"], crm["first_name"], strict=True):
        pid = person_of.get(("crm", cid))
        written, real = normalise_name(first), normalise_name(people.at[pid, "first_name"])
        if written and written != real:
            if (written, real) in pairs:
                nicknamed += 1
            elif SequenceMatcher(None, written, real).ratio() > 0.7:
                typos += 1
    assert nicknamed >= 3 and typos >= 1
    names = crm["last_name"][crm["last_name"] != ""]
    assert (names != names.str.strip()).any()
    assert (names == names.str.upper()).any() and (names == names.str.lower()).any()


def test_crm_duplicates_drift_in_birth_date_address_and_surname(sources, truth, person_of):
    crm = sources["crm"]
    crm = crm[crm["crm_id"] != ""].drop_duplicates("crm_id")
    crm = crm.assign(person=[person_of[("crm", c)] for c in crm["crm_id"]])
    assert crm["person"].duplicated().sum() >= 30  # several contacts for some people
    people = truth["people"].set_index("person_id")
    dob = crm[crm["date_of_birth"] != ""]
    wrong = dob[dob["date_of_birth"] != dob["person"].map(people["date_of_birth"])]
    assert len(wrong) >= 3
    assert pd.to_datetime(crm.loc[crm["date_of_birth"] != "", "date_of_birth"], format="%Y-%m-%d").notna().all()
    postcodes = crm["postcode"][crm["postcode"] != ""]
    assert (~postcodes.str.contains(" ")).any() and (postcodes != postcodes.str.upper()).any()
    normal = postcodes.map(normalise_postcode)
    truth_pc = crm.loc[postcodes.index, "person"].map(people["postcode"]).map(normalise_postcode)
    assert (normal == truth_pc).mean() > 0.95
    other_surname = pd.Series(
        [
            SequenceMatcher(None, normalise_name(a) or "", normalise_name(b) or "").ratio() < 0.5
            for a, b in zip(crm["last_name"], crm["person"].map(people["last_name"]), strict=True)
        ],
        index=crm.index,
    )
    renamed = crm[other_surname & (crm["last_name"] != "")]
    assert len(renamed) >= 1  # people who changed surname keep an old record under the old one
    assert crm["address_line1"].str.contains(",").any() and crm["address_line2"].str.startswith("Flat").any()


def test_crm_has_swapped_names_former_addresses_and_misdialled_mobiles(tmp_path):
    out = tmp_path / "inbox"
    generate_world(out, customers=2000, seed=2, files_per_source=1)
    crm = read_source(out, "crm")
    crm = crm[crm["crm_id"] != ""].drop_duplicates("crm_id")
    folder = Path(str(out) + "-truth")
    records = pd.read_csv(folder / "records.csv", dtype=str).set_index("source_record_id")["person_id"]
    people = pd.read_csv(folder / "people.csv", dtype=str, keep_default_na=False).set_index("person_id")
    person = crm["crm_id"].map(records)
    first, last = crm["first_name"].map(normalise_name), crm["last_name"].map(normalise_name)
    true_first, true_last = person.map(people["first_name"]).map(normalise_name), person.map(people["last_name"])
    assert ((first == true_last.map(normalise_name)) & (last == true_first)).sum() >= 2
    pc = crm["postcode"].map(normalise_postcode)
    home = person.map(people["postcode"])
    outward = home.str.split(" ").str[0]
    moved = pc.notna() & (pc != home.map(normalise_postcode)) & (pc.str[:-3] == outward)
    assert moved.sum() >= 5
    own = set(people["phones"].str.split(";").explode())
    written = crm["phone"].map(lambda v: normalise_phone(v, "GB"))
    stray = written[written.notna() & ~written.isin(own)]
    mobiles = {p[-8:] for p in own if p.startswith("+447")}
    assert stray.str[-8:].isin(mobiles).sum() >= 2  # same last eight digits, another network digit


def test_households_twins_and_common_names(truth):
    people = truth["people"]
    twins = people[people.duplicated(["household_id", "last_name", "date_of_birth"], keep=False)]
    assert len(twins) >= 2
    assert twins.groupby(["household_id", "date_of_birth"])["first_name"].nunique().min() >= 2
    smiths = people[(people["first_name"] == "John") & (people["last_name"] == "Smith")]
    assert len(smiths) >= 2 and smiths["date_of_birth"].nunique() >= 2


def test_store_rows_with_only_a_name_and_postcode(sources, truth):
    store = sources["store"]
    only = store[
        (store["first_name"] != "") & (store["last_name"] != "") & (store["postcode"] != "")
        & (store["loyalty_id"] == "") & (store["email"] == "") & (store["phone"] == "")
    ]  # fmt: skip
    assert len(only) >= 10
    anonymous = store[(store[["loyalty_id", "email", "phone", "first_name", "last_name"]] == "").all(axis=1)]
    records = truth["records"].set_index("source_record_id")
    assert (records.loc[anonymous["transaction_id"], "connectable"] == "false").all()
    assert store["loyalty_id"].isin(PLACEHOLDERS).any()


# --- no_shared_ids ------------------------------------------------------------------------------------


def test_no_shared_ids_mode_links_only_through_names_dates_and_addresses(tmp_path):
    out = tmp_path / "inbox"
    summary = generate_world(out, customers=300, seed=3, mode="no_shared_ids")
    assert set(summary.rows) == {"crm"}
    assert not any((out / s).exists() and any((out / s).iterdir()) for s in ("web", "app", "store", "consent"))
    crm = read_source(out, "crm")
    crm = crm[crm["crm_id"] != ""]
    assert crm["crm_id"].is_unique
    for column, norm in (
        ("email", email_match_key), ("phone", lambda v: normalise_phone(v, "GB")),
        ("loyalty_id", str.strip), ("user_id", str.strip),
    ):  # fmt: skip
        values = crm[column][crm[column] != ""].map(norm)
        assert len(values) > 50 and values.is_unique, column
    truth_folder = Path(str(out) + "-truth")
    records = pd.read_csv(truth_folder / "records.csv", dtype=str)
    assert set(records["source_record_id"]) == set(crm["crm_id"])
    per_person = records.groupby("person_id").size()
    assert per_person.mean() >= 1.7 and (per_person >= 3).any()
    multi = records["person_id"].map(per_person) > 1
    assert (records.loc[multi, "connectable"] == "true").all()
    assert (records.loc[~multi, "connectable"] == "false").all()
    people = pd.read_csv(truth_folder / "people.csv", dtype=str, keep_default_na=False).set_index("person_id")
    crm = crm.merge(records, left_on="crm_id", right_on="source_record_id")
    dob = crm[crm["date_of_birth"] != ""]
    truth_dob = dob["person_id"].map(people["date_of_birth"])
    swapped = dob["date_of_birth"].str[:4] + dob["date_of_birth"].str[7:] + dob["date_of_birth"].str[4:7]
    assert (dob["date_of_birth"] != truth_dob).sum() >= 5
    assert (swapped == truth_dob).any() and (dob["date_of_birth"] != truth_dob).mean() < 0.3
    assert (crm["postcode"].str.lower() == crm["postcode"]).any()
    assert (pd.read_csv(truth_folder / "consent.csv").columns == ["person_id", "purpose", "status", "event_time"]).all()


# --- interface ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "everything"}, "unknown mode"),
        ({"region": "US"}, "region"),
        ({"customers": 0}, "at least 1"),
        ({"files_per_source": 0}, "at least 1"),
    ],
)
def test_bad_arguments_raise_one_line_errors(tmp_path, kwargs, message):
    args = {"customers": 10, **kwargs}
    with pytest.raises(CdpError, match=message):
        generate_world(tmp_path / "inbox", **args)


def test_files_per_source_and_rerun_replaces_old_batches(tmp_path):
    out = tmp_path / "inbox"
    generate_world(out, customers=60, seed=1, files_per_source=5)
    assert all(len(list((out / s).iterdir())) == 5 for s in ("web", "app", "store", "crm", "consent"))
    summary = generate_world(out, customers=60, seed=1, files_per_source=2)
    assert all(len(list((out / s).iterdir())) == 2 for s in ("web", "app", "store", "crm", "consent"))
    assert summary.files == {s: 2 for s in ("crm", "web", "app", "store", "consent")}
    generate_world(out, customers=60, seed=1, mode="no_shared_ids")
    assert [s for s in ("web", "app", "store", "crm", "consent") if any((out / s).iterdir())] == ["crm"]


def test_nickname_list_covers_the_generator_and_has_its_header():
    path = Path(__file__).parents[1] / "identity" / "data" / "nicknames.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {"name", "canonical"}
    pairs = {(r["name"], r["canonical"]) for r in rows}
    for canonical, nicknames in NICKNAMES.items():
        for nickname in nicknames:
            assert (nickname.lower(), canonical.lower()) in pairs
    assert all(re.fullmatch(r"[a-z]+", r["name"]) and re.fullmatch(r"[a-z]+", r["canonical"]) for r in rows)


@pytest.mark.parametrize("mode", ["omnichannel", "no_shared_ids"])
def test_tiny_worlds_still_write_readable_batches(tmp_path, mode):
    for customers in (1, 2, 3):
        out = tmp_path / f"{customers}" / "inbox"
        summary = generate_world(out, customers=customers, seed=customers, mode=mode, files_per_source=50)
        for source, count in summary.files.items():
            files = list((out / source).iterdir())
            assert len(files) == count <= max(1, summary.rows[source])
            for path in files:
                assert set(REQUIRED[source]) <= set(read_file(path).columns), path.name
        records = pd.read_csv(Path(str(out) + "-truth") / "records.csv", dtype=str)
        assert len(records) == sum(summary.records.values())
