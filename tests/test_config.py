"""Settings: precedence of cdp.yaml, CDP_* variables and overrides, and one-line errors for bad values."""

import re
from pathlib import Path

import pytest

from cdp.config import load_settings
from cdp.errors import CdpError


def test_precedence_file_then_environment_then_overrides(tmp_path, monkeypatch):
    config = tmp_path / "cdp.yaml"
    config.write_text("default_region: FR\nmatch_threshold: 0.8\ndb_path: from-file.duckdb\n")
    monkeypatch.setenv("CDP_MATCH_THRESHOLD", "0.95")
    settings = load_settings(config, db_path="override.duckdb")
    assert settings.default_region == "FR"
    assert settings.match_threshold == 0.95
    assert settings.db_path == Path("override.duckdb")


def test_unknown_setting_and_bad_values_are_one_line_errors(tmp_path, monkeypatch):
    config = tmp_path / "cdp.yaml"
    config.write_text("colour: blue\n")
    with pytest.raises(CdpError, match="unknown setting"):
        load_settings(config)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    monkeypatch.setenv("CDP_MATCH_THRESHOLD", "high")
    with pytest.raises(CdpError, match="match_threshold: 'high' is not a float"):
        load_settings(empty)
    monkeypatch.delenv("CDP_MATCH_THRESHOLD")
    monkeypatch.setenv("CDP_ENGINE", "flink")
    with pytest.raises(CdpError, match="engine: 'flink' is not one of duckdb, spark"):
        load_settings(empty)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("db_path: [unclosed", "cdp.yaml: not valid YAML"),
        ("db_path:", "db_path: a path is needed"),
        ("default_region: XX", "default_region: 'XX' is not a region"),
        ("just a string", "cdp.yaml: expected settings as 'name: value' lines"),
        ("survivorship: crm", "survivorship: 'crm' is not a list of sources"),
        ("match_threshold: 7", "match_threshold: 7 is not a probability between 0 and 1"),
        ("match_threshold: -3", "match_threshold: -3 is not a probability between 0 and 1"),
        ("threads: 0", "threads: 0 is not a number of threads"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path, text, message):
    (tmp_path / "cdp.yaml").write_text(text + "\n")
    with pytest.raises(CdpError, match=re.escape(message)):
        load_settings(config_file=tmp_path / "cdp.yaml")


def test_a_region_is_read_whatever_its_case(tmp_path):
    (tmp_path / "cdp.yaml").write_text("")
    assert load_settings(config_file=tmp_path / "cdp.yaml", default_region="gb").default_region == "GB"


def test_a_settings_file_named_by_cdp_config_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("CDP_CONFIG", str(tmp_path / "missing.yaml"))
    message = f"{tmp_path / 'missing.yaml'}: no such settings file (named by CDP_CONFIG)"
    with pytest.raises(CdpError, match=re.escape(message)):
        load_settings()


@pytest.mark.parametrize("db", ["", ".", "/"])
def test_a_db_path_naming_a_folder_is_one_line(db):
    with pytest.raises(CdpError, match="names a folder; name the DuckDB file"):
        load_settings(db_path=Path(db))


@pytest.mark.parametrize("value", ["8GB", "8 gb", "1.5GB", "500MiB", "75%", "2T"])
def test_a_memory_limit_as_duckdb_reads_it_is_kept(value, monkeypatch):
    monkeypatch.setenv("CDP_MEMORY_LIMIT", value)
    assert load_settings().memory_limit == value
    import duckdb

    duckdb.connect().execute(f"SET memory_limit = '{value}'")  # and DuckDB takes it


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "memory_limit: 'lots' is not an amount of memory (e.g. 8GB, 500MB or 75%)"),
        ("8", "memory_limit: '8' is not an amount of memory (e.g. 8GB, 500MB or 75%)"),
        ("1024 bytes", "memory_limit: '1024 bytes' is too little for the store to work in (at least 128MiB)"),
        ("150%", "memory_limit: '150%' is not a share of the machine's memory (more than 0%, at most 100%)"),
        ("0.0001%", "memory_limit: '0.0001%' is too little for the store to work in (at least 128MiB)"),
    ],
)
def test_a_memory_limit_that_does_not_fit_stops_before_a_run(value, message, monkeypatch):
    """It used to pass, and the run's first step failed with DuckDB's parser error."""
    monkeypatch.setenv("CDP_MEMORY_LIMIT", value)
    with pytest.raises(CdpError) as caught:
        load_settings()
    assert str(caught.value) == message
