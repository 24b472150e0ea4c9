"""The keyed hash used for suppression (SQL equals Python) and the Great Expectations suites.

Suites are run on small tables built in an in-memory DuckDB; nothing here runs Dagster.
"""

import duckdb
import pytest

from cdp.errors import CdpError
from cdp.quality import SUITES, validate_table
from cdp.suppression import SqlHasher, identifier_hash, load_secret, store_secret


def test_sql_hmac_equals_python_hmac():
    secret = bytes(range(32))
    sql, params = SqlHasher(secret).expr("v", "email_key")
    con = duckdb.connect()
    values = ["ann@example.com", "+447700900123", "ü-ñ@example.com"]
    for value in values:
        got = con.execute(f"SELECT {sql} FROM (SELECT ? AS v)", [*params, value]).fetchall()[0][0]
        assert got == identifier_hash(secret, "email_key", value)
    # The type is part of the hashed text: the same value as another identifier type differs.
    assert identifier_hash(secret, "user_id", "x") != identifier_hash(secret, "crm_id", "x")


def test_secret_is_created_once_and_private(tmp_path):
    path = tmp_path / "home" / "secret.key"
    first = load_secret(path)
    assert load_secret(path) == first and len(first) == 32
    assert path.stat().st_mode & 0o077 == 0


def test_a_store_remembers_its_key_and_refuses_a_lost_or_other_one(tmp_path):
    """Under a new key no suppressed hash matches: erased people would be ingested again without a word."""
    path = tmp_path / "home" / "secret.key"
    con = duckdb.connect()
    key = store_secret(con, path)  # first use: the key is made and the store records its check value
    assert store_secret(con, path) == key
    (check,) = con.execute("SELECT check_value FROM suppression_key").fetchall()[0]
    assert key.hex() not in check and len(check) == 64  # an HMAC under the key, not the key
    path.unlink()
    with pytest.raises(CdpError, match="secret.key: the suppression key of this store is missing"):
        store_secret(con, path)
    assert not path.exists()  # no new key was made in its place
    load_secret(path)  # another installation's key, say
    with pytest.raises(CdpError, match="secret.key: not the suppression key this store was made with"):
        store_secret(con, path)


def test_a_store_with_suppressed_identifiers_and_no_key_on_record_refuses_a_missing_key(tmp_path):
    """A store from before keys were recorded: anyone on its suppression list means a key existed."""
    con = duckdb.connect()
    con.execute("CREATE TABLE suppression_list (identifier_type VARCHAR, identifier_hash VARCHAR)")
    assert store_secret(con, tmp_path / "a.key")  # nobody suppressed yet: a first key is made
    other = duckdb.connect()
    other.execute("CREATE TABLE suppression_list (identifier_type VARCHAR, identifier_hash VARCHAR)")
    other.execute("INSERT INTO suppression_list VALUES ('email_key', 'ab12')")
    with pytest.raises(CdpError, match="missing"):
        store_secret(other, tmp_path / "b.key")


@pytest.fixture
def staged():
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE stg_records (source VARCHAR, source_record_id VARCHAR, unit_id VARCHAR, email_key VARCHAR, "
        "phone_e164 VARCHAR, postcode VARCHAR)"
    )
    con.execute(
        "INSERT INTO stg_records VALUES ('crm', 'C1', 'crm:C1', 'ann@example.com', '+447700900123', 'SW1A1AA'), "
        "('web', 'e1', 'web:c1', NULL, NULL, NULL)"
    )
    return con


def test_staged_suite_passes_on_clean_data(staged):
    result = validate_table(staged, "stg_records")
    assert result.success and result.evaluated == len(SUITES["stg_records"])


def test_staged_suite_fails_on_bad_data_and_reports_counts_only(staged):
    staged.execute("INSERT INTO stg_records VALUES ('crm', 'C1', 'crm:C1', 'Not An Email', '07700 900123', 'sw1a 1aa')")
    result = validate_table(staged, "stg_records")
    assert not result.success
    failed = {f["expectation"]: f["unexpected_count"] for f in result.failures}
    assert failed["expect_column_values_to_match_regex(email_key)"] == 1
    assert failed["expect_column_values_to_match_regex(phone_e164)"] == 1
    assert failed["expect_compound_columns_to_be_unique(source,source_record_id)"] == 2
    # No failing value reaches the metadata Dagster stores.
    assert "Not An Email" not in repr(result.metadata()) and "07700" not in repr(result.metadata())


def test_validations_share_a_context_without_keeping_results_or_rows(staged):
    """The Great Expectations context and data sources are made once per process: a failure must not stay
    with the table for its next validation, and the rows validated must not stay in memory."""
    import gc

    import pandas as pd

    assert validate_table(staged, "stg_records").success
    staged.execute("INSERT INTO stg_records VALUES ('crm', 'C2', 'crm:C2', 'Not An Email', NULL, NULL)")
    assert not validate_table(staged, "stg_records").success
    staged.execute("DELETE FROM stg_records WHERE source_record_id = 'C2'")
    assert validate_table(staged, "stg_records").success

    rows = 4321  # a size nothing else in the process has
    staged.execute(
        "INSERT INTO stg_records SELECT 'web', 'bulk' || i, 'web:bulk' || i, NULL, NULL, NULL "
        f"FROM range({rows - 2}) t(i)"
    )
    assert validate_table(staged, "stg_records").rows == rows
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, pd.DataFrame) and len(o) == rows]


def test_validated_frames_are_not_fingerprinted(staged, monkeypatch):
    """Great Expectations hashes every value of a validated frame for a batch marker nothing reads (about 3 s of
    the 1M bench's full run): cdp.quality turns it off, and a release that brings it back fails here."""
    from great_expectations.execution_engine import pandas_execution_engine

    def hashing(_frame):  # type: ignore[no-untyped-def]
        raise AssertionError("a validated frame was fingerprinted")

    monkeypatch.setattr(pandas_execution_engine, "hash_pandas_dataframe", hashing)
    assert validate_table(staged, "stg_records").success


def test_expectation_types_are_derived_once_per_class(staged):
    """Great Expectations derives an expectation's type from its class name, by two regular expressions, each
    time it reads the expectation's configuration (about 75 times a validation): cdp.quality derives it once
    per class, the same type."""
    from great_expectations import util
    from great_expectations.expectations import expectation

    derive = expectation.camel_to_snake
    before = derive.cache_info()
    assert validate_table(staged, "stg_records").success
    after = derive.cache_info()
    assert after.hits > before.hits
    assert after.misses - before.misses <= len(SUITES["stg_records"])  # a new class at most once
    name = "ExpectColumnValuesToMatchRegex"
    assert derive(name) == util.camel_to_snake(name) == "expect_column_values_to_match_regex"


def test_expectation_configurations_are_built_once_a_validation_with_the_same_results(staged, monkeypatch):
    """Great Expectations builds an expectation's configuration anew at every read (about 75 times a validation):
    cdp.quality builds it once per expectation within a validation, and only there. The results, passing and
    failing, are those of Great Expectations' own property."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations import expectation

    from cdp import quality

    built: list[int] = []
    original = quality._build_configuration

    def counting(exp):  # type: ignore[no-untyped-def]
        built.append(id(exp))
        return original(exp)

    monkeypatch.setattr(quality, "_build_configuration", counting)
    staged.execute("INSERT INTO stg_records VALUES ('crm', 'C1', 'crm:C1', 'Not An Email', '07700 900123', 'sw1a 1aa')")
    remembered = validate_table(staged, "stg_records")
    # Once per expectation object (Great Expectations makes copies as it goes), however often it is read.
    assert built and len(built) == len(set(built))
    assert quality._configurations is None
    # Outside a validation, every read builds it, as Great Expectations does.
    built.clear()
    probe = gxe.ExpectColumnValuesToNotBeNull(column="unit_id")
    assert probe.configuration == probe.configuration and len(built) == 2
    monkeypatch.setattr(expectation.Expectation, "configuration", property(original))
    own = validate_table(staged, "stg_records")
    assert (remembered.success, remembered.failures, remembered.evaluated) == (own.success, own.failures, own.evaluated)
    assert not remembered.success and len(remembered.failures) == 4  # email, phone, postcode, the pair
