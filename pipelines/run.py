"""Materialise the asset graph in-process: what ``cdp run`` and ``cdp demo`` call.

It is the same job the Dagster UI shows (``cdp_pipeline`` in :mod:`pipelines.definitions`), executed
against the project's Dagster instance, so every run appears in the UI's run history.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import dagster as dg

from cdp.config import Settings
from pipelines.definitions import build_definitions
from pipelines.resources import INBOX_REPORTED, CdpStore, Inbox

PROJECT_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"


class StepRun(NamedTuple):
    """One step of a run; ``started`` and ``ended`` on the ``time.perf_counter`` clock, so that tools can time
    other things against steps (the benchmark samples memory)."""

    step: str
    status: str  # ok, FAILED or skipped
    started: float
    ended: float

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class RunOutcome:
    success: bool
    run_id: str
    seconds: float
    steps: list[StepRun] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (check, passed, severity)
    #: The ``errors`` the ingest assets reported: rejected files (also in ``ingest_batches``) and files that
    #: could not be read at all (not recorded: they are tried again on the next run).
    file_errors: list[str] = field(default_factory=list)
    failure: str | None = None


def prepare_instance(settings: Settings) -> dg.DagsterInstance:
    """The project-local Dagster instance (``<home>/dagster``), configured by the repo's dagster.yaml."""
    home = settings.dagster_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if PROJECT_DAGSTER_YAML.exists() and (
        not target.exists() or target.read_bytes() != PROJECT_DAGSTER_YAML.read_bytes()
    ):
        shutil.copyfile(PROJECT_DAGSTER_YAML, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


class _ProgressHandler(logging.Handler):
    """Turns Dagster's structured events into one progress line per step and check."""

    def __init__(self, outcome: RunOutcome, echo: Callable[[str], None]):
        super().__init__(level=logging.DEBUG)
        self.outcome = outcome
        self.echo = echo
        self.started: dict[str, float] = {}
        self.checked: set[str] = set()  # steps that evaluated checks
        self.materialized: set[str] = set()  # steps that materialised assets (some evaluate checks too)

    def emit(self, record: logging.LogRecord) -> None:
        meta: dict[str, Any] = getattr(record, "dagster_meta", {}) or {}
        event = getattr(record, "dagster_event", None) or meta.get("dagster_event")
        if event is None:
            if record.levelno >= logging.INFO and meta.get("step_key"):
                message = meta.get("orig_message") or record.getMessage()
                self.echo(f"    {meta.get('step_key')}: {message}")
            return
        kind = event.event_type_value
        step = event.step_key or ""
        if kind == "STEP_START":
            self.started[step] = time.perf_counter()
        elif kind == "ASSET_MATERIALIZATION":
            self.materialized.add(step)
            errors = event.event_specific_data.materialization.metadata.get("errors")
            self.outcome.file_errors.extend(errors.value if errors is not None else [])
        elif kind == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            name = f"{data.asset_key.to_user_string()}.{data.check_name}"
            severity = data.severity.value if data.severity else "ERROR"
            self.outcome.checks.append((name, bool(data.passed), severity))
            self.checked.add(step)
            mark = "✓" if data.passed else ("✗" if severity == "ERROR" else "!")
            line = f"  {mark} check {name} {'passed' if data.passed else 'FAILED'}"
            failures = data.metadata.get("failures")  # a suite's failed expectations, as counts
            if not data.passed and failures is not None and failures.value:
                line += f": {'; '.join(map(str, failures.value))}"
            self.echo(line)
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"):
            ended = time.perf_counter()
            started = self.started.get(step, ended)
            status = {"STEP_SUCCESS": "ok", "STEP_FAILURE": "FAILED", "STEP_SKIPPED": "skipped"}[kind]
            run = StepRun(step, status, started, ended)
            self.outcome.steps.append(run)
            if status != "ok" or step not in self.checked or step in self.materialized:  # a check's own line says it
                self.echo(f"  {'✓' if status == 'ok' else '✗'} {step} {status} ({run.seconds:.1f} s)")


def run_pipeline(
    settings: Settings,
    inbox: Path,
    echo: Callable[[str], None] = print,
    selection: list[str] | None = None,
    full_refresh: bool = False,
    instance: dg.DagsterInstance | None = None,
    report_inbox: bool = False,
) -> RunOutcome:
    """Materialise ``cdp_pipeline`` for ``inbox`` into ``settings.db_path``; returns what happened.

    Incremental unless ``full_refresh`` (see :class:`pipelines.resources.CdpStore`). ``instance`` defaults
    to the project's (:func:`prepare_instance`), whose run history the Dagster UI shows. ``report_inbox``: the
    caller prints :func:`cdp.ingest.inbox_notices` itself, and the run does not log them.
    """
    instance = instance or prepare_instance(settings)
    outcome = RunOutcome(success=False, run_id="", seconds=0.0)
    handler = _ProgressHandler(outcome, echo)

    def progress_logger(_init: dg.InitLoggerContext) -> logging.Logger:
        log = logging.Logger("cdp.progress", level=logging.DEBUG)
        log.addHandler(handler)
        return log

    progress = dg.LoggerDefinition(progress_logger, description="One line per step and check, for the terminal.")

    resources = {"store": CdpStore.from_settings(settings, full_refresh), "inbox": Inbox(path=str(inbox))}
    job = build_definitions(resources).resolve_job_def("cdp_pipeline").with_logger_defs({"console": progress})
    started = time.perf_counter()
    result = job.execute_in_process(
        run_config={"loggers": {"console": {}}},  # a logger definition only logs when configured
        instance=instance,
        raise_on_error=False,
        asset_selection=_keys(selection),
        tags={INBOX_REPORTED: "true"} if report_inbox else None,
    )
    outcome.seconds = time.perf_counter() - started
    outcome.run_id = result.run_id
    outcome.success = result.success
    if not result.success:
        outcome.failure = _failure_message(result)
    return outcome


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    """One line: the first failed step and the message of the user code's own exception."""
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        error = event.step_failure_data.error
        while (
            error is not None
            and error.cause is not None
            and "DagsterExecutionStepExecutionError" in (error.cls_name or "")
        ):
            error = error.cause  # unwrap Dagster's wrapper down to the exception the asset raised
        if error is None:
            return f"step {event.step_key} failed"
        if "DagsterAssetCheckFailedError" in (error.cls_name or ""):
            # "<n> blocking asset check(s) failed with ERROR severity:", then "<asset>: <check>,<check>" lines
            lines = error.message.strip().splitlines()[1:]
            failed = [
                f"{asset}.{c}" for asset, _, checks in (x.partition(": ") for x in lines) for c in checks.split(",")
            ]
            return f"step {event.step_key} failed: blocking check {', '.join(failed)} failed"
        first = error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name
        return f"step {event.step_key} failed: {first}"
    return "the run did not finish"


def _keys(selection: list[str] | None) -> list[dg.AssetKey] | None:
    return [dg.AssetKey(name) for name in selection] if selection else None
