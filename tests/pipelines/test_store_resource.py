"""The store resource: the steps of one run share one DuckDB connection, and a failed step undoes its work."""

import dagster as dg
import pytest

import cdp.store
import pipelines.resources as resources
from cdp.store import connect
from pipelines.resources import CdpStore


@dg.asset
def first(store: CdpStore) -> None:
    with store.session() as con:
        con.execute("CREATE TABLE t (x INTEGER)")
        con.execute("INSERT INTO t VALUES (1)")


@dg.asset(deps=[first])
def second(store: CdpStore) -> None:
    with store.session() as con:
        con.execute("INSERT INTO t VALUES (2)")


@dg.asset(deps=[second])
def half_done(store: CdpStore) -> None:
    with store.session() as con:
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO t VALUES (3)")
        raise RuntimeError("the step fails inside its transaction")


@pytest.fixture
def opened(monkeypatch):
    calls: list[str] = []

    def counting_connect(*args, **kwargs):
        calls.append(str(args[0]))
        return connect(*args, **kwargs)

    monkeypatch.setattr(resources, "connect", counting_connect)
    monkeypatch.setattr(cdp.store, "connect", counting_connect)
    return calls


def test_the_steps_of_a_run_share_one_connection_closed_at_the_end(tmp_path, opened):
    db = tmp_path / "cdp.duckdb"
    result = dg.materialize([first, second], resources={"store": CdpStore(db_path=str(db))})
    assert result.success
    assert opened == [str(db)]
    con = connect(db)  # the run's connection is closed: the file opens for writing again
    assert con.execute("SELECT list(x ORDER BY x) FROM t").fetchall()[0][0] == [1, 2]
    con.close()


def test_a_failed_step_leaves_no_open_transaction_behind(tmp_path, opened):
    db = tmp_path / "cdp.duckdb"
    store = CdpStore(db_path=str(db))
    result = dg.materialize([first, second, half_done], resources={"store": store}, raise_on_error=False)
    assert not result.success
    con = connect(db)
    assert con.execute("SELECT list(x ORDER BY x) FROM t").fetchall()[0][0] == [1, 2]
    con.close()


def test_outside_a_run_each_session_opens_and_closes_its_own(tmp_path, opened):
    store = CdpStore(db_path=str(tmp_path / "cdp.duckdb"))
    for _ in range(2):
        with store.session() as con:
            con.execute("SELECT 1")
    assert len(opened) == 2
    connect(tmp_path / "cdp.duckdb").close()  # nothing holds the file
