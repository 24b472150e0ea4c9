"""Profiles and consent: golden records, the consent ledger and state, and scheduled segment activations.

Thin wrappers over :mod:`identity.profiles`, :mod:`consent.ledger`, :mod:`consent.state` and
:mod:`consent.export`. Metadata and logs carry counts, segment names and purposes only, never people.
"""
# No `from __future__ import annotations` here: Dagster reads the context and resource annotations.

import dagster as dg
import duckdb

from pipelines.checks import scoped_check
from pipelines.resources import ROW_COUNT, CdpStore

#: Group of assets that send data out of the platform (pipelines.definitions.ACTIVATION_GROUP): they run on
#: their own schedule, not in a rebuild. Repeated here because definitions imports this package.
ACTIVATION_GROUP = "activation"

#: How far the table checks below look (pipelines.checks.scoped_check), for their descriptions.
SCOPE_NOTE = (
    "Run by the step after an incremental update of the table, it looks at the rows of the customers that "
    "update wrote, if it had passed on the table before (metadata `scope`); otherwise, and always in the "
    "activation job before an export, at the whole table."
)

#: Check names, as constants so the UI, tests and alerts can refer to them.
PROFILES_ONE_PER_CUSTOMER = "profiles_one_row_per_customer"
PROFILE_CONTACTS_NORMALISED = "profile_contacts_are_normalised"
CONSENT_STATE_TRACES_TO_LEDGER = "consent_state_traces_to_ledger"
EXPORT_ROWS_ALL_CONSENTED = "export_rows_all_consented"


@dg.asset(
    name="customer_profiles",
    group_name="profiles",
    kinds={"duckdb"},
    deps=[dg.AssetKey("customer_source_records"), dg.AssetKey("stg_records")],
    description=(
        "Golden record per customer. Grain: one row per customer_id. Survivorship per field: most recent "
        "non-empty value from the most trusted source (settings.survivorship, default crm > store > app > "
        "web), with `<field>_source` and `<field>_at`. Traits: first/last seen, channels, orders, total "
        "spend, average order value, first/last purchase, stores visited, latest app device. After an "
        "incremental identity run only the changed customers are recomputed (metadata `mode`, "
        "`customers_recomputed`). "
        "PII: first_name, last_name, email, phone, date_of_birth, address_line1, city, postcode, device_id."
    ),
)
def customer_profiles(context: dg.AssetExecutionContext, store: CdpStore) -> dg.MaterializeResult:
    from cdp.store import verified_checks
    from identity.changes import mark_consumed, pending_customers, records_of_run
    from identity.profiles import build_customer_profiles, profiles_current

    with store.session() as con:
        full = pending_customers(con, "customer_profiles") or not profiles_current(con, store.settings)
        verified = verified_checks(con, "customer_profiles")  # before the update, which takes them back
        counts = build_customer_profiles(
            con,
            store.settings,
            None if full else "_changed_customers",
            records=None if full else records_of_run(con, "_changed_customers"),  # read once a run, see there
            before_commit=lambda c: mark_consumed(c, "customer_profiles"),
        )
        if not full:  # its checks look at the customers recomputed (pipelines.checks.scoped_check)
            store.scope_checks(con, "customer_profiles", verified, "SELECT customer_id FROM _changed_customers")
    mode = "full" if full else "incremental"
    recomputed = counts.pop("customers_recomputed", counts["profiles"])
    context.log.info(
        f"{counts['profiles']} profiles from {counts['records']} source records ({mode}: {recomputed} "
        "customers recomputed)"
    )
    return dg.MaterializeResult(
        metadata={**counts, "mode": mode, "customers_recomputed": recomputed, ROW_COUNT: counts["profiles"]}
    )


@dg.asset(
    name="consent_events",
    group_name="consent",
    kinds={"duckdb"},
    deps=[dg.AssetKey("stg_consent"), dg.AssetKey("stg_records")],
    description=(
        "The consent ledger, append-only: every grant and withdrawal from the consent source, plus the "
        "app's push_opt_in/push_opt_out events as push_marketing consent. Grain: one row per event "
        "(event_id). Rows with an unknown purpose or status are counted, not appended. "
        "PII: email, email_key, phone_e164, user_id, crm_id, loyalty_id, device_id, anonymous_id."
    ),
)
def consent_events(context: dg.AssetExecutionContext, store: CdpStore) -> dg.MaterializeResult:
    from consent.ledger import sync_ledger

    with store.session() as con:
        counts = sync_ledger(con)
    context.log.info(
        f"ledger: {counts['appended_consent']} consent and {counts['appended_app']} app events appended, "
        f"{counts['events']} in total; {counts['not_consent']} rows with an unknown purpose or status"
        + (f"; identifiers of {counts['reread']} events read again by today's rules" if counts["reread"] else "")
    )
    return dg.MaterializeResult(metadata={**counts, ROW_COUNT: counts["events"]})


@dg.asset(
    name="consent_state",
    group_name="consent",
    kinds={"duckdb"},
    deps=[dg.AssetKey("consent_events"), dg.AssetKey("customer_source_records"), dg.AssetKey("stg_records")],
    description=(
        "Current consent per customer and purpose, from the whole ledger through the identity graph; after "
        "an incremental identity run only the customers it may change for are recomputed (metadata `mode`, "
        "`customers_recomputed`). Latest applicable event wins; withdrawals reach every customer an "
        "identifier maps to, grants only customers reached through identifiers unique to them. No row means "
        "no consent. "
        "Grain: one row per (customer_id, purpose). PII: none (customer ids and event ids only)."
    ),
)
def consent_state(context: dg.AssetExecutionContext, store: CdpStore) -> dg.MaterializeResult:
    from cdp.store import verified_checks
    from consent.state import RECOMPUTED_CUSTOMERS, build_consent_state, state_current
    from identity.changes import mark_consumed, pending_customers, records_of_run

    with store.session() as con:
        full = pending_customers(con, "consent_state") or not state_current(con)
        verified = verified_checks(con, "consent_state")  # before the update, which takes them back
        counts = build_consent_state(
            con,
            customers=None if full else "_changed_customers",
            records=None if full else records_of_run(con, "_changed_customers"),  # read once a run, see there
            before_commit=lambda c: mark_consumed(c, "consent_state"),
        )
        if not full:  # its check looks at the customers recomputed (pipelines.checks.scoped_check)
            store.scope_checks(con, "consent_state", verified, RECOMPUTED_CUSTOMERS)
        if full:  # a full rebuild recomputes every customer with records
            counts["customers_recomputed"] = _customers(con)
    mode = "full" if full else "incremental"
    line = (
        f"consent state ({mode}, {counts['customers_recomputed']} customers recomputed): "
        f"{counts['granted']} granted, {counts['withdrawn']} withdrawn"
    )
    if full:  # global counts, taken by full rebuilds only
        line += (
            f"; {counts['unmatched_events']} events wait for an identifier; "
            f"{counts['events_dated_ahead']} grants dated ahead wait for their date; "
            f"{counts['ambiguous_grants']} ambiguous grants"
        )
    context.log.info(line)
    return dg.MaterializeResult(metadata={**counts, "mode": mode, ROW_COUNT: counts["granted"] + counts["withdrawn"]})


def _customers(con: duckdb.DuckDBPyConnection) -> int:
    from cdp.store import table_exists

    if not table_exists(con, "customer_source_records"):
        return 0
    return int(con.execute("SELECT count(DISTINCT customer_id) FROM customer_source_records").fetchall()[0][0])


@dg.asset(
    name="segment_activations",
    group_name=ACTIVATION_GROUP,
    kinds={"duckdb", "csv"},
    deps=[dg.AssetKey("customer_profiles"), dg.AssetKey("consent_state"), dg.AssetKey("restrictions")],
    description=(
        "Scheduled exports: every segment whose YAML lists `activations` is exported for each of those "
        "purposes to <home>/exports/<segment>/<purpose>-<UTC time>.csv (0600), through consent/enforce, and "
        "recorded in export_register / export_members. Grain: one file per segment and purpose per run. "
        "PII: the files hold customer ids and the purpose's contact point."
    ),
)
def segment_activations(context: dg.AssetExecutionContext, store: CdpStore) -> dg.MaterializeResult:
    from datetime import UTC, datetime

    from cdp.errors import CdpError
    from consent.export import export_selected, verify_exports
    from consent.segments import Segment, load_segments

    settings = store.settings
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    found = load_segments(settings.segments_dir)
    invalid = [name for name, s in found.items() if not isinstance(s, Segment)]
    if invalid:  # segment names and file errors only: definitions, not people
        context.log.warning(f"{len(invalid)} segment files are invalid and were skipped: {', '.join(invalid)}")
    segments = [s for s in found.values() if isinstance(s, Segment) and s.activations]
    exported: dict[str, int] = {}
    export_ids: list[str] = []
    failed: list[str] = []
    with store.session() as con:
        for segment in segments:
            for purpose in segment.activations:
                out = settings.exports_dir / segment.name / f"{purpose}-{stamp}.csv"
                try:
                    result = export_selected(con, segment, purpose, out)
                except CdpError as exc:  # one bad activation must not stop the others; the run still fails
                    failed.append(f"{segment.name}.{purpose}: {exc}")
                    continue
                exported[f"{segment.name}.{purpose}"] = result.row_count
                export_ids.append(result.export_id)
                context.log.info(
                    f"{segment.name} for {purpose}: {result.row_count} of {result.counts.get('candidates', 0)} exported"
                )
        metadata: dict[str, int | str] = {
            "exports": len(export_ids),
            "export_ids": ",".join(export_ids),
            "invalid_segments": len(invalid),
            **{f"rows.{k}": v for k, v in exported.items()},
        }
        if failed:
            # A failed step materialises nothing, so export_rows_all_consented would never see the files this
            # run did write: they are verified here, the same way, and the failure says how they fared.
            verified = verify_exports(con, export_ids)
            metadata.update({f"verified.{k}": v for k, v in verified.items()})
            description = f"{len(failed)} activation(s) failed: " + "; ".join(failed)
            description += f" ({len(export_ids)} written, {verified['problems']} problem(s) found re-checking them)"
            raise dg.Failure(description=description, metadata=metadata)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(
    asset="customer_profiles",
    name=PROFILES_ONE_PER_CUSTOMER,
    blocking=True,
    description=(
        "Exactly one profile per customer in customer_source_records, and no profile without one. " + SCOPE_NOTE
    ),
)
def profiles_one_row_per_customer(store: CdpStore) -> dg.AssetCheckResult:
    def evaluate(con: duckdb.DuckDBPyConnection, only: str) -> tuple[bool, dict[str, int]]:
        # One join of each customer's profile rows with the customers (a profile without an id is an orphan,
        # and counts as no customer's profile): 48-52 ms at 1M against 52-78 ms for four separate counts.
        rows, distinct, missing, orphan = con.execute(
            f"""SELECT coalesce(sum(p.n), 0),
                       count(*) FILTER (WHERE p.customer_id IS NOT NULL),
                       count(*) FILTER (WHERE p.n IS NULL),
                       coalesce(sum(p.n) FILTER (WHERE c.customer_id IS NULL), 0)
                FROM (SELECT customer_id, count(*) AS n FROM customer_profiles WHERE {only} GROUP BY ALL) p
                FULL JOIN (SELECT DISTINCT customer_id FROM customer_source_records WHERE {only}) c
                  ON p.customer_id = c.customer_id"""
        ).fetchall()[0]
        metadata = {"profiles": rows, "duplicate_rows": rows - distinct, "missing": missing, "orphans": orphan}
        return rows == distinct and missing == 0 and orphan == 0, metadata

    return scoped_check(store, "customer_profiles", PROFILES_ONE_PER_CUSTOMER, evaluate)


@dg.asset_check(
    asset="customer_profiles",
    name=PROFILE_CONTACTS_NORMALISED,
    description=(
        "Profile emails are lower-case deliverable addresses and phones are E.164 (+ and digits). " + SCOPE_NOTE
    ),
)
def profile_contacts_are_normalised(store: CdpStore) -> dg.AssetCheckResult:
    def evaluate(con: duckdb.DuckDBPyConnection, only: str) -> tuple[bool, dict[str, int]]:
        bad_email, bad_phone = con.execute(
            "SELECT count(*) FILTER (WHERE email IS NOT NULL AND (email <> lower(trim(email)) "
            "OR NOT regexp_full_match(email, '[^@\\s]+@[^@\\s]+\\.[^@\\s]+'))), "
            "count(*) FILTER (WHERE phone IS NOT NULL AND NOT regexp_full_match(phone, '\\+[0-9]{7,15}')) "
            f"FROM customer_profiles WHERE {only}"
        ).fetchall()[0]
        return bad_email == 0 and bad_phone == 0, {"emails_not_normalised": bad_email, "phones_not_e164": bad_phone}

    return scoped_check(store, "customer_profiles", PROFILE_CONTACTS_NORMALISED, evaluate)


@dg.asset_check(
    asset="consent_state",
    name=CONSENT_STATE_TRACES_TO_LEDGER,
    blocking=True,
    description=(
        "Every consent_state row is one per customer and purpose, has a valid status and purpose, and "
        "names a ledger event with that purpose and status. " + SCOPE_NOTE
    ),
)
def consent_state_traces_to_ledger(store: CdpStore) -> dg.AssetCheckResult:
    from cdp.config import PURPOSES

    def evaluate(con: duckdb.DuckDBPyConnection, only: str) -> tuple[bool, dict[str, int]]:
        # Rows without a ledger event of their purpose and status, and rows of an unknown purpose or status,
        # each counted once (an anti-join: 27-31 ms at 1M, against 34-55 ms for a left join tested row by row).
        untraced = con.execute(
            f"""SELECT count(*) FROM (
                    SELECT s.r FROM (SELECT rowid AS r, event_id, purpose, status FROM consent_state WHERE {only}) s
                    ANTI JOIN consent_events e
                      ON e.event_id = s.event_id AND e.purpose = s.purpose AND e.status = s.status
                    UNION SELECT rowid FROM consent_state WHERE ({only}) AND (status IS NULL OR purpose IS NULL
                      OR status NOT IN ('granted', 'withdrawn') OR purpose NOT IN {PURPOSES}))"""
        ).fetchall()[0][0]
        duplicates = con.execute(
            f"SELECT count(*) - count(DISTINCT (customer_id, purpose)) FROM consent_state WHERE {only}"
        ).fetchall()[0][0]
        return untraced == 0 and duplicates == 0, {"untraced_rows": untraced, "duplicate_rows": duplicates}

    return scoped_check(store, "consent_state", CONSENT_STATE_TRACES_TO_LEDGER, evaluate)


@dg.asset_check(
    asset="segment_activations",
    name=EXPORT_ROWS_ALL_CONSENTED,
    description=(
        "Every customer in the exports of the latest activation run may still be contacted for the export's "
        "purpose (consent/enforce), each register row count equals its members, and each file still has the "
        "recorded SHA-256."
    ),
)
def export_rows_all_consented(context: dg.AssetCheckExecutionContext, store: CdpStore) -> dg.AssetCheckResult:
    from consent.export import verify_exports

    event = context.instance.get_latest_materialization_event(dg.AssetKey("segment_activations"))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    ids_value = meta.get("export_ids")
    export_ids = [i for i in str(ids_value.value if ids_value else "").split(",") if i]
    with store.session() as con:
        report = verify_exports(con, export_ids)
    return dg.AssetCheckResult(passed=report["problems"] == 0, metadata=report)


#: What an activation reads: the checks of these tables run again in its job, before the export. Their
#: blocking checks then gate it: a failed one (a consent state that does not trace to the ledger, a
#: restriction left on a former customer id) stops the export in the same run. In the pipeline's own job
#: nothing downstream of them would be stopped, and the schedule would export from the failed table.
ACTIVATION_READS = ("customer_profiles", "consent_state", "restrictions")

activation_job = dg.define_asset_job(
    name="segment_activation",
    selection=dg.AssetSelection.groups(ACTIVATION_GROUP)
    | dg.AssetSelection.checks_for_assets(*(dg.AssetKey(name) for name in ACTIVATION_READS)),
    description=(
        "Check the profiles, consent state and restrictions again, then export every segment with "
        "`activations` for each of its purposes, under consent (not if a blocking check fails)."
    ),
)

#: Daily at 06:00 UTC. pipelines.definitions registers it (with activation_job).
activation_schedule = dg.ScheduleDefinition(
    name="segment_activation_daily", job=activation_job, cron_schedule="0 6 * * *", execution_timezone="UTC"
)
