"""A sensor that runs the pipeline when new exports land in the inbox.

Upstream systems drop a file per export batch into ``inbox/<source>/``. The sensor looks at the folder every
30 seconds and requests a run of ``cdp_pipeline`` for the files it has not launched a run for yet; the run
ingests what is new (by content hash) and updates everything downstream incrementally.

A file counts once it has kept the same size and modification time between two looks, so an export still
being copied is not read half-written. The cursor holds file names, sizes and times only, never contents.
The sensor is off until turned on in the UI (Automation, ``inbox_sensor``), or with
``dagster sensor start inbox_sensor``: a deployment that runs ``cdp run`` from its own scheduler does not
want a second trigger.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg

from cdp.ingest import inbox_files
from cdp.store import SOURCES
from pipelines.resources import Inbox

PIPELINE_JOB = "cdp_pipeline"


def inbox_signatures(folder: Path) -> dict[str, str]:
    """``source/file`` -> ``size:mtime_ns`` of every file the ingestion would read."""
    signatures = {}
    for source in SOURCES:
        for path in inbox_files(folder, source):
            stat = path.stat()
            signatures[f"{source}/{path.name}"] = f"{stat.st_size}:{stat.st_mtime_ns}"
    return signatures


@dg.sensor(
    name="inbox_sensor",
    job_name=PIPELINE_JOB,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Requests a run of cdp_pipeline when files appear in (or change in) the inbox's source folders, once "
        "each has kept its size and time between two looks. The run ingests only what is new."
    ),
)
def inbox_sensor(context: dg.SensorEvaluationContext, inbox: Inbox) -> dg.SensorResult:
    if not inbox.folder.is_dir():
        return dg.SensorResult(skip_reason=f"no inbox folder at {inbox.folder}", cursor=context.cursor)
    state = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, str] = state.get("seen", {})
    launched: dict[str, str] = state.get("launched", {})
    now = inbox_signatures(inbox.folder)
    settled = {name: sig for name, sig in now.items() if seen.get(name) == sig}
    new = sorted(name for name, sig in settled.items() if launched.get(name) != sig)
    launched = {name: sig for name, sig in launched.items() if name in now} | {name: settled[name] for name in new}
    cursor = json.dumps({"seen": now, "launched": launched}, sort_keys=True)
    settling = len(now) - len(settled)
    if not new:
        reason = f"no new file in {inbox.folder}" + (f" ({settling} still being written)" if settling else "")
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    batch = json.dumps({name: now[name] for name in new}, sort_keys=True)
    request = dg.RunRequest(
        run_key=hashlib.sha256(batch.encode()).hexdigest()[:16],
        tags={"cdp/new_files": str(len(new)), "cdp/trigger": "inbox_sensor"},
    )
    context.log.info(f"{len(new)} new file(s) in {inbox.folder}: {', '.join(new[:5])}{' ...' if len(new) > 5 else ''}")
    return dg.SensorResult(run_requests=[request], cursor=cursor)
