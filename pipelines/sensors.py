"""A sensor that runs the pipeline when new exports land in the inbox.

Upstream systems drop a file per export batch into ``inbox/<source>/``. The sensor looks at the folder every
30 seconds and requests a run of ``cdp_pipeline`` for the files it has not launched a run for yet; the run
ingests what is new (by content hash) and updates everything downstream incrementally.

A file counts once it has kept the same size and modification time between two looks, so an export still
being copied is not read half-written. The cursor holds file names, sizes and times only, never contents, and
its size does not grow with the inbox's history: files that arrived more than a day before the look are
covered by a watermark of arrival times, and only the last day's files are listed by name.
The sensor is off until turned on in the UI (Automation, ``inbox_sensor``), or with
``dagster sensor start inbox_sensor``: a deployment that runs ``cdp run`` from its own scheduler does not
want a second trigger.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dagster as dg

from cdp.ingest import inbox_files
from cdp.store import SOURCES
from pipelines.resources import Inbox

PIPELINE_JOB = "cdp_pipeline"


#: Files launched within this span before the look stay listed by name in the cursor; older ones are covered
#: by the watermark. The span absorbs a clock put back (NTP) or an export's clock behind the machine's.
LISTED_NS = 24 * 3600 * 10**9


def inbox_signatures(folder: Path) -> dict[str, tuple[int, str]]:
    """``source/file`` -> (arrival, ``size:mtime_ns``) of every file the ingestion would read. The arrival is
    the later of the change and modification times: a file copied in with its old modification time kept
    (``cp -p``, ``rsync -t``) still arrives when it was copied, since nothing sets a change time back."""
    signatures = {}
    for source in SOURCES:
        for path in inbox_files(folder, source):
            stat = path.stat()
            arrived = max(stat.st_ctime_ns, stat.st_mtime_ns)
            signatures[f"{source}/{path.name}"] = (arrived, f"{stat.st_size}:{stat.st_mtime_ns}")
    return signatures


@dataclass
class InboxCursor:
    """What the sensor remembers between looks: every file that arrived at or before ``mark`` (ns) has been
    launched; ``launched`` the files launched since, ``seen`` the files waiting to settle as the last look found
    them (each ``name -> size:mtime_ns``)."""

    mark: int = 0
    launched: dict[str, str] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> InboxCursor:
        state = json.loads(text) if text else {}
        # A cursor of an earlier release listed every file seen and launched, with no mark.
        return cls(int(state.get("mark", 0)), dict(state.get("launched", {})), dict(state.get("seen", {})))

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def look(self, now: dict[str, tuple[int, str]], clock_ns: int) -> tuple[list[str], int]:
        """Take a look at the inbox's files ``now`` (:func:`inbox_signatures`) at ``clock_ns``: returns the
        files to launch (new or changed, and settled since the last look) and how many are still settling.

        A mark ahead of a day before the look (the clock was ahead when it was set, and has been put right)
        comes back: else every file arriving after the correction would fall under it, never launched. Files
        launched between the two marks may be launched once more; the run finds their content ingested."""
        self.mark = min(self.mark, clock_ns - LISTED_NS)
        fresh = {
            name: sig for name, (arrived, sig) in now.items() if arrived > self.mark and self.launched.get(name) != sig
        }
        new = sorted(name for name, sig in fresh.items() if self.seen.get(name) == sig)
        settling = {name: sig for name, sig in fresh.items() if name not in new}
        launched = {name: sig for name, sig in self.launched.items() if now.get(name, (0, ""))[1] == sig}
        launched |= {name: fresh[name] for name in new}
        # The mark moves up to a day before the look, never past a file still settling.
        self.mark = max(self.mark, min([clock_ns - LISTED_NS, *(now[name][0] - 1 for name in settling)]))
        self.launched = {name: sig for name, sig in launched.items() if now[name][0] > self.mark}
        self.seen = settling
        return new, len(settling)


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
    state = InboxCursor.parse(context.cursor)
    now = inbox_signatures(inbox.folder)
    new, settling = state.look(now, time.time_ns())
    cursor = state.dumps()
    if not new:
        reason = f"no new file in {inbox.folder}" + (f" ({settling} still being written)" if settling else "")
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    batch = json.dumps({name: now[name][1] for name in new}, sort_keys=True)
    request = dg.RunRequest(
        run_key=hashlib.sha256(batch.encode()).hexdigest()[:16],
        tags={"cdp/new_files": str(len(new)), "cdp/trigger": "inbox_sensor"},
    )
    context.log.info(f"{len(new)} new file(s) in {inbox.folder}: {', '.join(new[:5])}{' ...' if len(new) > 5 else ''}")
    return dg.SensorResult(run_requests=[request], cursor=cursor)
