"""Fixtures of the consent tests: the tiny world of consent_world.py, rebuilt, and settings in tmp_path."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from consent_world import at, make_world, rebuild

from cdp.config import Settings


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    make_world(con)
    rebuild(con, as_of=at(20))
    return con


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    segments = tmp_path / "segments"
    segments.mkdir()
    (segments / "big_spenders.yaml").write_text(
        "name: big_spenders\ndescription: Spent 100 or more\nwhere:\n  all:\n    - total_spend >= 100\n"
        "fields: [first_name, total_spend]\nactivations: [email_marketing]\n"
    )
    return Settings(db_path=tmp_path / "cdp.duckdb", home=tmp_path / "home", segments_dir=segments)
