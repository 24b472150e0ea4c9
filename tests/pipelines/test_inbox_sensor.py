"""The inbox sensor: a run for files that have finished landing, once per file version."""

import json
import os
import time

import dagster as dg

from pipelines.definitions import defs
from pipelines.resources import Inbox
from pipelines.sensors import PIPELINE_JOB, inbox_sensor


def _look(inbox, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(cursor=cursor, resources={"inbox": Inbox(path=str(inbox))})
    return inbox_sensor(context)


def _drop(inbox, name: str, text: str, mtime_ns: int) -> None:
    path = inbox / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_file_is_launched_once_it_has_settled_and_only_once(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    first = _look(inbox)
    assert not first.run_requests and "no new file" in first.skip_reason.skip_message

    _drop(inbox, "web/web-001.csv", "event_id,event_time,anonymous_id\n", 1_000)
    _drop(inbox, "crm/notes.txt", "not an export", 1_000)  # not a format the ingestion reads
    landing = _look(inbox, first.cursor)
    assert not landing.run_requests and "1 still being written" in landing.skip_reason.skip_message

    settled = _look(inbox, landing.cursor)
    [request] = settled.run_requests
    assert request.tags["cdp/new_files"] == "1"

    again = _look(inbox, settled.cursor)
    assert not again.run_requests

    # A second export: one more run, with a run key of its own; a file rewritten counts as new again.
    _drop(inbox, "store/store-001.csv", "transaction_id,transaction_time\n", 2_000)
    _drop(inbox, "web/web-001.csv", "event_id,event_time,anonymous_id\n1,2026-01-01,a\n", 3_000)
    more = _look(inbox, _look(inbox, again.cursor).cursor)
    [second] = more.run_requests
    assert second.tags["cdp/new_files"] == "2" and second.run_key != request.run_key


def test_a_file_still_growing_waits(tmp_path):
    inbox = tmp_path / "inbox"
    _drop(inbox, "app/app-001.csv", "event_id", 1_000)
    cursor = _look(inbox).cursor
    _drop(inbox, "app/app-001.csv", "event_id,event_time,device_id\n", 2_000)  # still being copied
    growing = _look(inbox, cursor)
    assert not growing.run_requests
    assert _look(inbox, growing.cursor).run_requests


def test_a_missing_inbox_is_a_reason_to_skip(tmp_path):
    result = _look(tmp_path / "nowhere")
    assert not result.run_requests and "no inbox folder" in result.skip_reason.skip_message


def test_the_code_location_has_it_for_the_pipeline_job_and_off_by_default():
    sensor = defs.resolve_sensor_def("inbox_sensor")
    assert sensor.job_name == PIPELINE_JOB
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert defs.resolve_job_def(PIPELINE_JOB) is not None


def test_the_cursor_lists_the_last_day_of_files_not_the_inbox_history(tmp_path, monkeypatch):
    """Every tick keeps a copy of the cursor: listing a year of daily exports in it made each tick's row grow
    with the inbox. Files that arrived before the listed span are covered by a watermark instead."""
    from pipelines import sensors

    inbox = tmp_path / "inbox"
    for day in range(200):
        _drop(inbox, f"web/web-{day:03}.csv", "event_id,event_time,anonymous_id\n", 1_000 + day)
    launched = _look(inbox, _look(inbox).cursor)
    assert launched.run_requests[0].tags["cdp/new_files"] == "200"
    assert len(launched.cursor) > 200 * len("web/web-000.csv")  # arrived within the day: listed by name

    monkeypatch.setattr(sensors, "LISTED_NS", 0)  # a day later
    later = _look(inbox, launched.cursor)
    assert not later.run_requests and len(later.cursor) < 100
    # An export copied in with its old modification time kept (cp -p) still arrives now, and is launched. The
    # kernel stamps a new file's change time from a coarser clock than time.time_ns(): a file written right
    # after the look above was stamped about 1 ms before it (2 runs in 200), under the mark that look set (the
    # span is 0 here; a day in use, which no tick reaches). It is written a tick later, as files arrive.
    time.sleep(0.02)
    _drop(inbox, "web/web-old.csv", "event_id,event_time,anonymous_id\n", 500)
    [request] = _look(inbox, _look(inbox, later.cursor).cursor).run_requests
    assert request.tags["cdp/new_files"] == "1"


def test_a_cursor_of_the_earlier_release_launches_nothing_again(tmp_path):
    inbox = tmp_path / "inbox"
    _drop(inbox, "crm/crm-001.csv", "crm_id\n", 1_000)
    _drop(inbox, "crm/crm-002.csv", "crm_id,first_name\n", 2_000)
    signature = {name: f"{(inbox / name).stat().st_size}:{(inbox / name).stat().st_mtime_ns}" for name in
                 ("crm/crm-001.csv", "crm/crm-002.csv")}  # fmt: skip
    earlier = json.dumps({"seen": signature, "launched": {"crm/crm-001.csv": signature["crm/crm-001.csv"]}})
    [request] = _look(inbox, earlier).run_requests
    assert request.tags["cdp/new_files"] == "1"  # crm-002 had settled and was not launched yet


def test_a_clock_put_back_does_not_leave_the_mark_ahead_of_new_files(tmp_path):
    """Set while the clock was days ahead, the mark stood above every file arriving after the correction."""
    import time

    from pipelines.sensors import InboxCursor, inbox_signatures

    inbox = tmp_path / "inbox"
    _drop(inbox, "web/web-001.csv", "event_id,event_time,anonymous_id\n", 1_000)
    cursor, now = InboxCursor(), time.time_ns()
    ahead = now + 3 * 24 * 3600 * 10**9
    cursor.look(inbox_signatures(inbox), ahead)
    assert cursor.look(inbox_signatures(inbox), ahead)[0] == ["web/web-001.csv"]
    _drop(inbox, "web/web-002.csv", "event_id,event_time,anonymous_id\n", 2_000)  # after the correction
    cursor.look(inbox_signatures(inbox), now)
    new, _ = cursor.look(inbox_signatures(inbox), now)
    assert "web/web-002.csv" in new
