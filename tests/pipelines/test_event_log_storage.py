"""The project's Dagster event log (pipelines/storage.py): Dagster's sqlite files, connections kept open."""

import shutil
import sqlite3
from pathlib import Path

import dagster as dg
import pytest

from pipelines import storage
from pipelines.run import PROJECT_DAGSTER_YAML
from pipelines.storage import PooledSqliteEventLogStorage


@dg.asset
def numbers() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 3})


@dg.asset_check(asset=numbers)
def numbers_positive() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


@dg.asset
def noted(context: dg.AssetExecutionContext) -> None:
    context.log.info("a line of the step's own")


def _instance(home: Path, monkeypatch: pytest.MonkeyPatch, yaml: Path | None) -> dg.DagsterInstance:
    home.mkdir(exist_ok=True)
    if yaml is not None:
        shutil.copyfile(yaml, home / "dagster.yaml")
    else:
        (home / "dagster.yaml").unlink(missing_ok=True)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return dg.DagsterInstance.get()


def _run(instance: dg.DagsterInstance) -> str:
    result = dg.materialize([numbers, numbers_positive], instance=instance)
    assert result.success
    return result.run_id


def test_project_instance_uses_it_in_dagsters_own_place(tmp_path, monkeypatch):
    instance = _instance(tmp_path / "home", monkeypatch, PROJECT_DAGSTER_YAML)
    try:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        _run(instance)
        run_id = _run(instance)
        assert (tmp_path / "home" / "history" / "runs" / f"{run_id}.db").exists()
        event = instance.get_latest_materialization_event(dg.AssetKey("numbers"))
        assert event is not None and event.asset_materialization.metadata["rows"].value == 3
        kinds = {e.dagster_event_type for e in instance.all_logs(run_id) if e.dagster_event_type}
        assert {dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.ASSET_CHECK_EVALUATION} <= kinds
        # One engine per database file, kept between uses: the index and the two runs' shards.
        assert len(instance.event_log_storage._engines) == 3
    finally:
        instance.dispose()
    assert instance.event_log_storage._engines == {}


def test_history_written_by_dagsters_default_storage_stays_readable(tmp_path, monkeypatch):
    home = tmp_path / "home"
    before = _instance(home, monkeypatch, None)  # Dagster's default sqlite storage
    old_run = _run(before)
    before.dispose()
    after = _instance(home, monkeypatch, PROJECT_DAGSTER_YAML)
    try:
        assert isinstance(after.event_log_storage, PooledSqliteEventLogStorage)
        assert after.get_run_by_id(old_run) is not None
        assert any(e.dagster_event_type == dg.DagsterEventType.RUN_SUCCESS for e in after.all_logs(old_run))
        new_run = _run(after)
        records = after.fetch_materializations(dg.AssetKey("numbers"), limit=10).records
        assert {r.run_id for r in records} >= {old_run, new_run}
    finally:
        after.dispose()


def test_engines_are_bounded_and_wipe_lets_go_of_them(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "MAX_ENGINES", 2)
    events = PooledSqliteEventLogStorage(str(tmp_path / "runs"))
    for shard in ("index", "run-a", "run-b", "run-c"):
        with events._connect(shard) as conn:
            conn.exec_driver_sql("SELECT 1")
    assert list(events._engines) == ["run-b", "run-c"]
    assert (tmp_path / "runs" / "run-a.db").exists()
    events.wipe()  # deletes the run shards' files, then empties the index through a new engine
    assert list(events._engines) == ["index"] and not (tmp_path / "runs" / "run-c.db").exists()
    events.dispose()


def test_without_dagster_home_it_writes_to_a_temporary_directory(monkeypatch):
    # What `dagster definitions validate` run from the repository does: ./dagster.yaml, no DAGSTER_HOME.
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    events = PooledSqliteEventLogStorage()
    try:
        assert Path(events._base_dir).name.startswith("dagster-event-log-")
        with events.index_connection() as conn:
            conn.exec_driver_sql("SELECT 1")
    finally:
        events.dispose()


def _shard(path: Path) -> tuple[list[tuple[str, str, str]], list[tuple[str]]]:
    """A shard's schema (every table, index and trigger, as created) and its migration stamp."""
    con = sqlite3.connect(path)
    try:
        schema = sorted(con.execute("SELECT type, name, sql FROM sqlite_master").fetchall(), key=str)
        return schema, con.execute("SELECT version_num FROM alembic_version").fetchall()
    finally:
        con.close()


def test_run_shards_are_dagsters_own_copied_from_a_template_written_once(tmp_path, monkeypatch):
    dagsters = _instance(tmp_path / "default", monkeypatch, None)
    try:
        expected = _shard(tmp_path / "default" / "history" / "runs" / f"{_run(dagsters)}.db")
    finally:
        dagsters.dispose()
    storage._migrations.cache_clear()
    runs_dir = tmp_path / "project" / "history" / "runs"
    ours = _instance(tmp_path / "project", monkeypatch, PROJECT_DAGSTER_YAML)
    try:
        runs = [_run(ours), _run(ours)]
        assert [_shard(runs_dir / f"{r}.db") for r in runs] == [expected] * 2
        assert storage._migrations.cache_info().misses == 1  # read for the template, by the first run only
    finally:
        ours.dispose()
    # The template outlives the process, out of the way of Dagster's globs of run shards; nothing is left over.
    assert [p.name for p in (runs_dir / ".templates").iterdir()] == [f"run-shard-{dg.__version__}.db"]
    assert sorted(p.name for p in runs_dir.iterdir() if p.name.startswith(".")) == [".templates"]
    storage._migrations.cache_clear()  # the next run's process: the template is there, no migration is read
    ours = _instance(tmp_path / "project", monkeypatch, PROJECT_DAGSTER_YAML)
    try:
        assert _shard(runs_dir / f"{_run(ours)}.db") == expected
        assert storage._migrations.cache_info().misses == 0
    finally:
        ours.dispose()


def test_a_shard_that_cannot_be_linked_into_place_is_stamped_where_it_is(tmp_path, monkeypatch):
    def no_links(*_args: object) -> None:
        raise OSError("links not supported")

    monkeypatch.setattr(storage.os, "link", no_links)
    events = PooledSqliteEventLogStorage(str(tmp_path / "runs"))
    try:
        with events._connect("run-a") as conn:
            conn.exec_driver_sql("SELECT 1")
    finally:
        events.dispose()
    assert _shard(tmp_path / "runs" / "run-a.db") == _shard(
        tmp_path / "runs" / ".templates" / f"run-shard-{dg.__version__}.db"
    )
    assert not [p for p in (tmp_path / "runs").iterdir() if p.suffix == ".tmp"]


def test_a_running_runs_events_reach_a_watcher_as_they_are_written(tmp_path):
    """The UI streams a running run's events through ``watch``. Dagster's watchdog waits for the shard's .db
    file to change; with kept connections the commits stay in its -wal file until a checkpoint, so the
    events arrived only when the run ended. Each must arrive before the next is written."""
    import logging
    import threading

    from dagster._core.events.log import EventLogEntry

    log = PooledSqliteEventLogStorage(str(tmp_path / "runs"))
    arrived = threading.Condition()
    seen: list[str] = []

    def callback(entry: EventLogEntry, _cursor: str) -> None:
        with arrived:
            seen.append(entry.user_message)
            arrived.notify_all()

    def event(message: str) -> EventLogEntry:
        return EventLogEntry(
            error_info=None, level=logging.INFO, user_message=message, run_id="r1", timestamp=0.0, dagster_event=None
        )

    log.store_event(event("started"))  # the shard exists before the UI watches it
    log.watch("r1", None, callback)
    try:
        for n in range(1, 4):
            log.store_event(event(f"step {n}"))
            with arrived:
                assert arrived.wait_for(lambda n=n: f"step {n}" in seen, timeout=10), seen
        assert Path(f"{log.path_for_shard('r1')}-wal").exists()  # the commits are in the write-ahead log
    finally:
        log.dispose()


def test_a_table_found_is_remembered_and_one_missing_is_looked_for_again(tmp_path, monkeypatch):
    events = PooledSqliteEventLogStorage(str(tmp_path / "runs"))
    looked: list[str] = []
    dagsters = storage.SqliteEventLogStorage.has_table
    monkeypatch.setattr(
        storage.SqliteEventLogStorage, "has_table", lambda self, name: looked.append(name) or dagsters(self, name)
    )
    try:
        assert events.has_table("asset_check_executions") and events.has_table("asset_check_executions")
        assert looked == ["asset_check_executions"]  # read from the index shard once
        assert not events.has_table("added_later") and not events.has_table("added_later")
        assert looked.count("added_later") == 2
        with sqlite3.connect(tmp_path / "runs" / "index.db") as db:  # a migration in another process adds it
            db.execute("CREATE TABLE added_later (x INTEGER)")
        assert events.has_table("added_later")
    finally:
        events.dispose()


def test_asset_key_columns_and_data_migrations_found_are_remembered(tmp_path, monkeypatch):
    from dagster._core.storage.event_log.migration import ASSET_KEY_INDEX_COLS

    events = PooledSqliteEventLogStorage(str(tmp_path / "runs"))
    looked: list[str] = []
    for method in ("has_asset_key_col", "has_secondary_index"):
        dagsters = getattr(storage.SqliteEventLogStorage, method)
        monkeypatch.setattr(
            storage.SqliteEventLogStorage,
            method,
            lambda self, name, dagsters=dagsters: looked.append(name) or dagsters(self, name),
        )
    try:
        for _ in range(2):
            assert events.has_asset_key_col("cached_status_data") and events.has_secondary_index(ASSET_KEY_INDEX_COLS)
            assert not events.has_asset_key_col("added_later") and not events.has_secondary_index("done_later")
        assert looked == ["cached_status_data", ASSET_KEY_INDEX_COLS, "added_later", "done_later"] + [
            "added_later",
            "done_later",
        ]  # found: read once; missing: read again
        with sqlite3.connect(tmp_path / "runs" / "index.db") as db:  # a migration in another process
            db.execute("ALTER TABLE asset_keys ADD COLUMN added_later TEXT")
            db.execute("INSERT INTO secondary_indexes (name, migration_completed) VALUES ('done_later', '2026-01-01')")
        assert events.has_asset_key_col("added_later") and events.has_secondary_index("done_later")
        events.wipe()  # a wiped store is read anew
        looked.clear()
        assert events.has_asset_key_col("cached_status_data") and looked == ["cached_status_data"]
        # Storing an asset event asks on the connection it writes with: the answer found is used there too.
        reflected: list[str] = []
        on_connection = storage.SqliteEventLogStorage._has_asset_key_col_on_connection
        monkeypatch.setattr(
            storage.SqliteEventLogStorage,
            "_has_asset_key_col_on_connection",
            lambda self, conn, name: reflected.append(name) or on_connection(self, conn, name),
        )
        with events.index_connection() as conn:
            for column in ("cached_status_data", "last_materialization_timestamp", "last_materialization_timestamp"):
                assert events._has_asset_key_col_on_connection(conn, column)
        assert reflected == ["last_materialization_timestamp"]
    finally:
        events.dispose()


def _rows(shard: Path) -> list[tuple[object, ...]]:
    """A run shard's event rows as stored, without what differs from run to run (ids, times, the run's id)."""
    con = sqlite3.connect(shard)
    try:
        return sorted(
            con.execute(
                """SELECT dagster_event_type, step_key, asset_key, partition, typeof(timestamp), length(timestamp),
                          typeof(event), json_extract(event, '$.__class__')
                   FROM event_logs"""
            ).fetchall(),
            key=str,
        )
    finally:
        con.close()


def test_events_of_steps_and_logs_are_stored_as_dagsters_own_are(tmp_path, monkeypatch):
    """Step and log events go through one compiled INSERT (PooledSqliteEventLogStorage.store_event): the rows are
    those Dagster's storage writes for the same job, and read back the same."""
    shards = []
    for home, yaml in (("default", None), ("project", PROJECT_DAGSTER_YAML)):
        instance = _instance(tmp_path / home, monkeypatch, yaml)
        try:
            result = dg.materialize([numbers, numbers_positive, noted], instance=instance)
            kinds = {e.dagster_event_type for e in instance.all_logs(result.run_id)}
            assert {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_OUTPUT, None} <= kinds  # None: a log line
        finally:
            instance.dispose()
        shards.append(_rows(tmp_path / home / "history" / "runs" / f"{result.run_id}.db"))
    assert shards[0] == shards[1]
