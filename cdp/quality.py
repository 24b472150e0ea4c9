"""Great Expectations suites for the raw and staged tables.

Each suite is declared as data (:data:`SUITES`) and validated on the columns it needs, read from DuckDB
into pandas. Results are reduced to counts per expectation: Great Expectations' own result objects carry
samples of the failing values, which are personal data and must not reach Dagster's event log.

``great_expectations`` takes about 3 s to import. This module imports it when it loads, which the
pipeline's code location does once (as it imports Dagster and Splink), so that a run's first check does
not pay it; the ``cdp`` commands that do not validate never import this module.
"""

from __future__ import annotations

import calendar
import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.datasource.fluent import PandasDatasource
from great_expectations.datasource.fluent.pandas_datasource import DataFrameAsset
from great_expectations.execution_engine import pandas_execution_engine
from great_expectations.expectations import expectation as gx_expectation

from cdp.config import PURPOSES
from cdp.store import batches_not_in, record_batches
from identity.standardise import CLOCK_SKEW, EARLIEST_PLAUSIBLE_TIME

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # read when a context is made, not on import
#: Great Expectations fingerprints every DataFrame under 1 GB that it validates (an md5 of pandas' hash of every
#: value, twice a validation) and keeps it as a batch marker, which nothing here reads: 1.56 s a pass over the 1M
#: bench's seven validated tables (0.91 s for the staged records), about 3 s of its full run, and 25 ms of a 1%
#: batch. No frame is small enough to fingerprint now. Great Expectations has no setting for it; it is pinned
#: (requirements.lock), and tests/test_suppression_and_quality.py fails if a release fingerprints again.
pandas_execution_engine.HASH_THRESHOLD = 0
#: Each expectation's configuration is rebuilt every time Great Expectations reads it, about 75 times an
#: expectation in a validation, and each time its type is derived anew from the class name by two regular
#: expressions: a sixth of a small batch's validation (20 of 140 ms over the seven validations of the 1M bench's
#: 1% batch). The name of a class always gives the same type, so it is derived once per class.
gx_expectation.camel_to_snake = functools.cache(gx_expectation.camel_to_snake)
logging.getLogger("great_expectations").setLevel(logging.ERROR)

#: Within one of :func:`validate_table`'s validations, each expectation's configuration is built once and then
#: read from here: Great Expectations builds it anew at every read (a pydantic ``dict()`` of the expectation, then
#: an ``ExpectationConfiguration``), about 75 times an expectation, and that was a fifth of a small batch's
#: validations (the seven of the 1M bench's 1% batch: 93-99 against 112-125 ms). The suites' expectations are
#: made for the validation and nothing changes them during it. Outside a validation (None), every read builds
#: the configuration as Great Expectations does. Keyed by ``id``, with the expectation kept alive until the
#: validation ends, so that an id is not reused meanwhile.
_configurations: dict[int, tuple[Any, Any]] | None = None
_build_configuration = gx_expectation.Expectation.configuration.fget  # type: ignore[attr-defined]


def _configuration(expectation: Any) -> Any:
    if _configurations is None:
        return _build_configuration(expectation)
    found = _configurations.get(id(expectation))
    if found is None:  # (an id in the table is its expectation's: kept alive, it cannot be reused)
        found = _configurations[id(expectation)] = (expectation, _build_configuration(expectation))
    return found[1]


gx_expectation.Expectation.configuration = property(_configuration)  # type: ignore[method-assign,assignment]

E164 = r"^\+[1-9][0-9]{6,14}$"
#: A match key: lower-case ASCII, or a mailbox name beyond ASCII (identity.standardise reads such addresses),
#: at a domain in its ASCII form, an internationalised top-level domain (``xn--p1ai``) included.
EMAIL_KEY = r"^(?:[a-z0-9._%'\-]|[^\x00-\x7f])+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.(?:[a-z]{2,}|xn--[a-z0-9\-]+)$"
POSTCODE = r"^[A-Z0-9]+$"

WEB_EVENTS = [
    "page_view",
    "product_view",
    "add_to_cart",
    "checkout",
    "purchase",
    "sign_up",
    "newsletter_signup",
    "login",
]
APP_EVENTS = ["app_open", "login", "product_view", "add_to_cart", "purchase", "push_opt_in", "push_opt_out"]


@dataclass(frozen=True)
class Expect:
    """One expectation: the Great Expectations class name and its keyword arguments."""

    kind: str
    kwargs: dict[str, Any]
    #: SQL for the column's values as validated (``{c}``: the column), when not the values themselves.
    select: str | None = None

    @property
    def columns(self) -> list[str]:
        if "column" in self.kwargs:
            return [self.kwargs["column"]]
        return list(self.kwargs.get("column_list", []))


def _not_null(col: str) -> Expect:
    return Expect("ExpectColumnValuesToNotBeNull", {"column": col})


def _regex(col: str, pattern: str) -> Expect:
    return Expect("ExpectColumnValuesToMatchRegex", {"column": col, "regex": pattern})


def _in_set(col: str, values: list[str], mostly: float = 1.0) -> Expect:
    return Expect("ExpectColumnValuesToBeInSet", {"column": col, "value_set": values, "mostly": mostly})


def _epoch(moment: datetime) -> int:
    return calendar.timegm(moment.timetuple())


def _latest_plausible() -> int:
    return _epoch(datetime.now(UTC).replace(tzinfo=None) + CLOCK_SKEW)


def _plausible_time(col: str) -> Expect:
    """``col`` is neither a default from before 1990 nor later than a day from now (the suite runs as the
    batch arrives; a callable value is worked out then). Compared as epoch seconds: Great Expectations
    compared the 432k timestamps of the 1M bench's web events in 2.2 s, their epochs in 0.36 s."""
    bounds = {"min_value": _epoch(EARLIEST_PLAUSIBLE_TIME), "max_value": _latest_plausible}
    return Expect("ExpectColumnValuesToBeBetween", {"column": col, **bounds}, select="epoch({c})::BIGINT")


def _unique(*cols: str) -> Expect:
    if len(cols) == 1:
        return Expect("ExpectColumnValuesToBeUnique", {"column": cols[0]})
    return Expect("ExpectCompoundColumnsToBeUnique", {"column_list": list(cols)})


#: table -> expectations. Raw suites describe what arrived (unknown event types are tolerated up to a
#: share); staged suites guard what identity resolution and consent rely on.
SUITES: dict[str, list[Expect]] = {
    "raw_web": [
        _not_null("event_id"),
        _not_null("event_time"),
        _plausible_time("event_time"),
        _not_null("anonymous_id"),
        _in_set("event_type", WEB_EVENTS, mostly=0.95),
    ],
    "raw_app": [
        _not_null("event_id"),
        _not_null("event_time"),
        _plausible_time("event_time"),
        _not_null("device_id"),
        _in_set("event_type", APP_EVENTS, mostly=0.95),
    ],
    "raw_store": [
        _not_null("transaction_id"),
        _not_null("transaction_time"),
        _plausible_time("transaction_time"),
        Expect("ExpectColumnValuesToBeBetween", {"column": "amount", "min_value": -100000, "max_value": 1000000}),
    ],
    "raw_crm": [_not_null("crm_id"), _plausible_time("created_at"), _plausible_time("updated_at")],
    "raw_consent": [_not_null("consent_id"), _not_null("event_time")],
    "stg_records": [
        _not_null("source_record_id"),
        _not_null("unit_id"),
        _unique("source", "source_record_id"),
        _regex("email_key", EMAIL_KEY),
        _regex("phone_e164", E164),
        _regex("postcode", POSTCODE),
        _in_set("source", ["web", "app", "store", "crm"]),
    ],
    "stg_consent": [
        _unique("consent_id"),
        _in_set("purpose", list(PURPOSES)),
        _in_set("status", ["granted", "withdrawn"]),
        _regex("email_key", EMAIL_KEY),
        _regex("phone_e164", E164),
    ],
}


@dataclass
class SuiteResult:
    """The outcome of one suite: counts per expectation, no values."""

    table: str
    rows: int
    success: bool
    failures: list[dict[str, Any]] = field(default_factory=list)
    evaluated: int = 0

    def metadata(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "expectations": self.evaluated,
            "failed": len(self.failures),
            "failures": [f"{f['expectation']}: {f['unexpected_count']} unexpected" for f in self.failures],
        }


def validate_table(
    con: duckdb.DuckDBPyConnection, table: str, suite: list[Expect] | None = None, batches: list[str] | None = None
) -> SuiteResult:
    """Validate ``table`` (only its rows of ``batches`` when given) against its suite with Great
    Expectations; returns counts only."""
    global _configurations
    expectations = suite if suite is not None else SUITES[table]
    columns = sorted({c for e in expectations for c in e.columns})
    # A column some expectation reads through its own SQL is selected that way (its other expectations,
    # such as not null, hold for it alike).
    selects = {c: e.select.format(c=f'"{c}"') for e in expectations if e.select for c in e.columns}
    quoted = ", ".join(f'{selects[c]} AS "{c}"' if c in selects else f'"{c}"' for c in columns)
    where = "WHERE batch_id IN (SELECT unnest($batches))" if batches is not None else ""
    params = {"batches": batches} if batches is not None else {}
    df = con.execute(f"SELECT {quoted} FROM {table} {where}", params).df()  # table and columns: SUITES
    gx_suite = gx.ExpectationSuite(
        name=f"{table}_suite",
        expectations=[
            getattr(gxe, e.kind)(**{k: v() if callable(v) else v for k, v in e.kwargs.items()}) for e in expectations
        ],
    )
    failures = []
    with _GX_LOCK:
        batch_def = _batch_definition(table)
        batch = batch_def.get_batch(batch_parameters={"dataframe": df})
        _configurations = {}
        try:
            # Pass or fail first (BOOLEAN_ONLY: no sample of failing values is even computed, and a suite of
            # small batches runs a third faster than with the default SUMMARY); only a failed expectation is
            # run again for its count of unexpected values.
            outcome = batch.validate(gx_suite, result_format="BOOLEAN_ONLY")
            for r in outcome.results:
                config = r.expectation_config
                if not r.success and config is not None:  # a suite's results always name their expectation
                    counted = batch.validate(config.to_domain_obj(), result_format="BASIC")
                    failures.append(
                        {
                            "expectation": _label(config),
                            "unexpected_count": int(counted.result.get("unexpected_count") or 0),
                        }
                    )
        finally:
            _configurations = None
            # The data source's engine keeps the batch it validated and its data (one per asset): the batch is
            # forgotten and empty data takes its place, so that no table's rows stay in memory afterwards.
            engine = batch_def.data_asset.datasource.get_execution_engine()
            engine.batch_manager.reset_batch_cache()
            engine.load_batch_data(batch.id, df.iloc[0:0])
    return SuiteResult(table, len(df), bool(outcome.success), failures, evaluated=len(outcome.results))


#: One Great Expectations context per process, with one pandas data source holding an asset per validated
#: table, declared whole and added at once: the context saves its configuration as YAML at every addition,
#: and adding a data source, asset and batch definition per table took 0.14 s, a validation's worth of a
#: small batch, before a run's first checks. Validations take turns on it.
_GX_LOCK = threading.Lock()


@functools.cache
def _datasource() -> Any:
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    assets = [
        DataFrameAsset(type="dataframe", name=table, batch_definitions=[BatchDefinition(name="whole_table")])
        for table in SUITES
    ]
    return context.data_sources.add_pandas(datasource=PandasDatasource(name="cdp", assets=assets))


def _batch_definition(table: str) -> Any:
    return _datasource().get_asset(table).get_batch_definition("whole_table")


def unvalidated_batches(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """Batches with rows in ``table`` whose rows have not passed its suite yet."""
    return batches_not_in(con, "validated_batches", table, (table,))


def mark_validated(con: duckdb.DuckDBPyConnection, table: str, batches: list[str]) -> None:
    record_batches(con, "validated_batches", table, batches)


def _label(config: Any) -> str:
    kwargs = config.kwargs
    cols = kwargs.get("column") or ",".join(kwargs.get("column_list") or [])
    return f"{config.type}({cols})"
