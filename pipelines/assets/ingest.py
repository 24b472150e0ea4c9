"""Ingest layer: one raw table per inbox source, and the staged tables built from them."""
# No `from __future__ import annotations` here: Dagster reads the context and resource annotations.

from collections import Counter
from pathlib import Path

import dagster as dg

from cdp.store import SOURCES
from pipelines.checks import expectations_result, expectations_spec
from pipelines.resources import INBOX_REPORTED, ROW_COUNT, CdpStore, Inbox

_PII = {
    "web": "anonymous_id, user_id, email",
    "app": "device_id, user_id, email, phone",
    "store": "loyalty_id, email, phone, first_name, last_name, postcode",
    "crm": "names, email, phone, date_of_birth, address, loyalty_id, user_id",
    "consent": "email, phone, user_id, crm_id, loyalty_id, device_id, anonymous_id",
}


def raw_source_asset(source: str) -> dg.AssetsDefinition:
    """The ``raw_<source>`` asset: ingests every new file of ``inbox/<source>/``."""

    @dg.asset(
        name=f"raw_{source}",
        group_name="ingest",
        kinds={"duckdb"},
        description=(
            f"Rows of `inbox/{source}/` files as received, typed (UTC timestamps, decimal amounts). "
            f"Grain: one row per input row. PII: {_PII[source]}. Rows with an empty or unparseable "
            "required value (or a key another owner holds) go to `quarantine`, with their reasons counted in "
            "`quarantine_reasons`; rows of erased subjects are suppressed, and `ingest_batches` counts both "
            "per file."
        ),
        check_specs=[expectations_spec(f"raw_{source}", blocking=False)],
    )
    def _raw(context: dg.AssetExecutionContext, store: CdpStore, inbox: Inbox) -> dg.MaterializeResult:
        from cdp.ingest import Ingestor, inbox_notices
        from cdp.suppression import store_secret

        if not inbox.folder.is_dir():  # a run from the UI or a schedule with no inbox: say so, not a green run
            setting = "the inbox is `inbox:` in cdp.yaml, or CDP_INBOX; `make demo` writes data/demo/inbox"
            raise dg.Failure(description=f"{inbox_notices(inbox.folder)[0]} ({setting})")
        notices = _notices(context, source, inbox.folder)
        for notice in notices:
            context.log.warning(notice)
        settings = store.settings
        with store.session() as con:
            secret = store_secret(con, settings.secret_path)
            # A file rejected or not read is one warning line, with why (the UI's filter for warnings shows it).
            ingestor = Ingestor(con, secret, settings.default_region, context.log.info, context.log.warning)
            batches = ingestor.ingest_source(inbox.folder, source)
            total = con.execute(f"SELECT count(*) FROM raw_{source}").fetchall()[0][0]
        new = [b for b in batches if b.status != "skipped"]
        reasons: Counter[str] = Counter()
        for b in new:
            reasons.update(b.quarantine_reasons)
        return dg.MaterializeResult(
            metadata={
                "files_new": len(new),
                "files_skipped": len(batches) - len(new),
                "files_rejected": sum(b.status in ("rejected", "failed") for b in new),
                "rows_in": sum(b.rows_in for b in new),
                "rows_loaded": sum(b.rows_loaded for b in new),
                "rows_quarantined": sum(b.rows_quarantined for b in new),
                "rows_suppressed": sum(b.rows_suppressed for b in new),
                "quarantine_reasons": dg.MetadataValue.json(dict(reasons.most_common())),
                ROW_COUNT: total,
                "errors": [b.error for b in new if b.error],
                "inbox_notices": notices,
            },
            check_results=[expectations_result(store, f"raw_{source}", blocking=False)],
        )

    return _raw


def _notices(context: dg.AssetExecutionContext, source: str, inbox: Path) -> list[str]:
    """The inbox's own notices (:func:`cdp.ingest.inbox_notices`) for the first raw asset of the run only, so
    that a run logs each once (and lists the inbox once); none when the run's launcher prints them itself
    (``cdp run``, after its summary)."""
    from cdp.ingest import inbox_notices

    if context.run.tags.get(INBOX_REPORTED) == "true":
        return []
    selected = context.run.asset_selection
    in_run = [s for s in SOURCES if not selected or dg.AssetKey(f"raw_{s}") in selected]
    return inbox_notices(inbox) if in_run and in_run[0] == source else []


raw_assets = [raw_source_asset(source) for source in SOURCES]


@dg.asset(
    group_name="staging",
    kinds={"duckdb"},
    deps=["raw_web", "raw_app", "raw_store", "raw_crm"],
    check_specs=[expectations_spec("stg_records", blocking=True)],
)
def stg_records(store: CdpStore) -> dg.MaterializeResult:
    """Standardised web events, app events, store transactions and CRM contacts.

    Grain: one row per record (the latest version of a key). Identifiers in matching form: email match
    key (Gmail dots and +tags folded), E.164 phones, cleaned names and postcodes; `unit_id` names the
    identity unit (CRM contact, store transaction, web cookie, app device). Incremental: only the keys
    new batches carry are restaged, and their units listed in `stg_unit_changes` for identity resolution.
    PII: email, phone_e164, names, date_of_birth, address, postcode, account, loyalty, cookie and device ids.
    """
    from identity.staging import build_stg_records

    with store.session() as con:
        counts = build_stg_records(con, store.default_region, incremental=not store.full_refresh)
        changed = con.execute("SELECT count(*) FROM stg_unit_changes WHERE unit_id <> '*'").fetchall()[0][0]
    rows = {f"rows_{k}": v for k, v in counts.items()}
    return dg.MaterializeResult(
        metadata={**rows, ROW_COUNT: sum(counts.values()), "units_changed": changed},
        check_results=[expectations_result(store, "stg_records", blocking=True)],
    )


@dg.asset(
    group_name="staging",
    kinds={"duckdb"},
    deps=["raw_consent"],
    check_specs=[expectations_spec("stg_consent", blocking=True)],
)
def stg_consent(store: CdpStore) -> dg.MaterializeResult:
    """Standardised consent events, subject identifiers normalised like `stg_records`.

    Grain: one row per consent event (latest version of a consent_id).
    PII: email, phone_e164, account, CRM, loyalty, device and cookie ids.
    """
    from identity.staging import build_stg_consent

    with store.session() as con:
        rows = build_stg_consent(con, store.default_region, incremental=not store.full_refresh)
    return dg.MaterializeResult(
        metadata={ROW_COUNT: rows}, check_results=[expectations_result(store, "stg_consent", blocking=True)]
    )
