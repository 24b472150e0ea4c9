"""Consent benchmark: exported customers whose latest consent is not a grant, and customers held back who granted.

    python -m bench.consent_bench                     # 20,000-person world
    python -m bench.consent_bench --customers 2000

A world is generated and run through the pipeline; ``all_customers`` is exported for ``email_marketing``
and ``sms_marketing`` exactly as ``cdp segments export`` does. Every exported row is traced through the
ground truth to the person behind it (the person most of the customer's records belong to) and checked
against that person's latest consent for the purpose, whichever identifier it came through. A row whose
person's latest consent is not a grant is a leak, and is put in one of three kinds by the event that
decided it (``consent_events.csv`` of the truth names each event's person):

- ``reached``: the exported customer carries one of the event's identifiers -- consent state should have
  applied it (a defect of consent resolution);
- ``connectable``: one of the person's units carrying the event's identifier is in the same evidence group
  as the exported customer's units -- identity resolution missed a link the data holds;
- ``unconnectable``: no evidence in the data joins the event's identifier to the exported customer (a
  withdrawal through a phone that no record of that person carries together with anything else).

The other side of the same rules: customers held back as withdrawn although the person behind them last
granted (``withheld``). Most are the person's own earlier withdrawal, where their later grant reached another
of their customers or none (a grant applies only through an identifier that names one); the rest were reached
by another person's withdrawal (``withheld_by_others``), and of those, ``withheld_loose`` through the loose
email key alone (a withdrawal also reaches the customers whose email differs from its own only in punctuation,
a ``+tag`` or what follows the domain's first label). Such a customer gets no message they asked for; a leak
would send one to somebody who said no.

Results go to ``bench/results/consent.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = ROOT / "work"
PURPOSES = ("email_marketing", "sms_marketing")
IDENTIFIERS = ("email_key", "phone_e164", "user_id", "crm_id", "loyalty_id", "device_id", "anonymous_id")


def measure(customers: int, seed: int) -> dict:
    from cdp.config import load_settings
    from cdp.generate import generate_world
    from cdp.store import connect
    from consent.export import export_segment
    from pipelines.run import run_pipeline

    work = WORK / f"consent-{customers}"
    shutil.rmtree(work, ignore_errors=True)
    inbox = work / "inbox"
    generate_world(inbox, customers=customers, seed=seed)
    truth = Path(f"{inbox}-truth")
    settings = load_settings(db_path=work / "cdp.duckdb", home=work / "home", inbox=inbox)
    started = time.perf_counter()
    outcome = run_pipeline(settings, inbox, echo=lambda _m: None)
    if not outcome.success:
        raise SystemExit(f"bench: the pipeline failed: {outcome.failure}")
    pipeline_s = time.perf_counter() - started
    con = connect(settings.db_path)
    try:
        for name in ("records", "consent", "consent_events"):
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE _t_{name} AS SELECT * FROM read_csv(?, all_varchar = true)",
                [str(truth / f"{name}.csv")],
            )
        # The person behind each customer (most of its records) and the evidence groups of its units.
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _customer_person AS
            SELECT c.customer_id, arg_max(t.person_id, (t.n, t.person_id)) AS person_id FROM (  -- ties: same pick
                SELECT c.customer_id, t.person_id, count(*) AS n
                FROM customer_source_records c JOIN _t_records t USING (source, source_record_id) GROUP BY ALL
            ) t JOIN (SELECT DISTINCT customer_id FROM customer_source_records) c USING (customer_id)
            GROUP BY 1
            """
        )
        results = {}
        for purpose in PURPOSES:
            out = work / f"all_customers-{purpose}.csv"
            export = export_segment(con, settings, "all_customers", purpose, out)
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _exported AS SELECT customer_id FROM read_csv(?, all_varchar = true)",
                [str(out)],
            )
            results[purpose] = _leaks(con, purpose, export.row_count) | withheld(con, purpose)
    finally:
        con.close()
    return {"customers": customers, "seed": seed, "pipeline_s": round(pipeline_s, 1), "exports": results}


def _leaks(con, purpose: str, rows: int) -> dict:  # type: ignore[no-untyped-def]
    ids = ", ".join(IDENTIFIERS)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _deciding AS  -- each person's latest event for the purpose
        SELECT e.person_id, arg_max(s.consent_id, (s.event_time, s.consent_id)) AS consent_id
        FROM stg_consent s JOIN _t_consent_events e USING (consent_id)
        WHERE s.purpose = $purpose GROUP BY 1
        """,
        {"purpose": purpose},
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _leaks AS
        WITH latest AS (
            SELECT person_id, status FROM _t_consent WHERE purpose = $purpose
        )
        SELECT x.customer_id, p.person_id, coalesce(l.status, 'none') AS status, d.consent_id
        FROM _exported x JOIN _customer_person p USING (customer_id)
        LEFT JOIN latest l USING (person_id) LEFT JOIN _deciding d USING (person_id)
        WHERE coalesce(l.status, 'none') <> 'granted'
        """,
        {"purpose": purpose},
    )
    # The issue's own case: withdrew at a store with the phone, while the email came from the CRM.
    till_people, till_exported = con.execute(
        """
        WITH till AS (
            SELECT d.person_id FROM _deciding d JOIN stg_consent s USING (consent_id)
            WHERE s.source = 'store_form' AND s.status = 'withdrawn' AND s.phone_e164 IS NOT NULL
              AND d.person_id IN (
                  SELECT t.person_id FROM stg_records r JOIN _t_records t USING (source, source_record_id)
                  WHERE r.source = 'crm' AND r.email_key IS NOT NULL)
        )
        SELECT count(*), count(*) FILTER (WHERE person_id IN (
            SELECT p.person_id FROM _exported JOIN _customer_person p USING (customer_id)))
        FROM till
        """
    ).fetchall()[0]
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _leak_ids AS
        SELECT l.customer_id, l.person_id, i.id_type, i.id_value FROM _leaks l
        JOIN (UNPIVOT (SELECT consent_id, {ids} FROM stg_consent) ON {ids} INTO NAME id_type VALUE id_value) i
          USING (consent_id)
        """
    )
    kinds = con.execute(
        f"""
        WITH carried AS (
            SELECT DISTINCT customer_id, person_id, evidence_group, id_type, id_value FROM (
                UNPIVOT (
                    SELECT c.customer_id, t.person_id, t.evidence_group, {", ".join("s." + i for i in IDENTIFIERS)}
                    FROM customer_source_records c JOIN stg_records s USING (source, source_record_id)
                    JOIN _t_records t USING (source, source_record_id)
                ) ON {ids} INTO NAME id_type VALUE id_value
            )
        )
        SELECT
            count(*) AS leaks,
            count(*) FILTER (WHERE reached) AS reached,
            count(*) FILTER (WHERE NOT reached AND connectable) AS connectable,
            count(*) FILTER (WHERE NOT reached AND NOT connectable) AS unconnectable
        FROM (
            SELECT l.customer_id,
                   EXISTS (SELECT 1 FROM _leak_ids i JOIN carried c USING (customer_id, id_type, id_value)
                           WHERE i.customer_id = l.customer_id) AS reached,
                   EXISTS (SELECT 1 FROM _leak_ids i JOIN carried c USING (id_type, id_value)
                           WHERE i.customer_id = l.customer_id AND c.person_id = l.person_id
                             AND c.evidence_group IN (
                                 SELECT t.evidence_group FROM customer_source_records r
                                 JOIN _t_records t USING (source, source_record_id)
                                 WHERE r.customer_id = l.customer_id AND t.person_id = l.person_id)) AS connectable
            FROM _leaks l
        )
        """
    ).fetchall()[0]
    names = ("leaks", "reached", "connectable", "unconnectable")
    till = {"till_withdrawals": int(till_people), "till_withdrawals_exported": int(till_exported)}
    return {"rows": rows, **dict(zip(names, map(int, kinds), strict=True)), **till}


def withheld(con, purpose: str) -> dict:  # type: ignore[no-untyped-def]
    """``withheld``: customers whose consent state for ``purpose`` is a withdrawal while the person behind them
    (``_customer_person``) last granted (``_t_consent``); ``withheld_by_others``: those whose deciding event is
    another person's (``_t_consent_events``, by the ledger's ``consent_id``); ``withheld_loose``: those of them
    the loose email key alone reached (the state's ``via``)."""
    total, by_others, loose = con.execute(
        """
        SELECT count(*), count(*) FILTER (WHERE others), count(*) FILTER (WHERE others AND via = 'email_loose')
        FROM (
            SELECT s.via, coalesce(e.person_id <> p.person_id, false) AS others
            FROM consent_state s JOIN _customer_person p USING (customer_id)
            JOIN _t_consent t ON t.person_id = p.person_id AND t.purpose = s.purpose
            LEFT JOIN consent_events ev USING (event_id)  -- the ledger's row: its source's consent_id
            LEFT JOIN _t_consent_events e ON e.consent_id = ev.consent_id
            WHERE s.purpose = $purpose AND s.status = 'withdrawn' AND t.status = 'granted'
        )
        """,
        {"purpose": purpose},
    ).fetchall()[0]
    return {"withheld": int(total), "withheld_by_others": int(by_others), "withheld_loose": int(loose)}


def to_markdown(report: dict) -> str:
    lines = [
        f"World: {report['customers']:,} people (seed {report['seed']}); pipeline {report['pipeline_s']} s.",
        "",
        "| export | rows | leaks | consent not applied | identity missed a connectable link | no evidence joins it "
        "| withdrew at a store by phone, email from the CRM: people | of them exported "
        "| withheld: the person last granted | by another person's withdrawal | of them by the loose email key alone |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for purpose, r in report["exports"].items():
        lines.append(
            f"| all_customers / {purpose} | {r['rows']:,} | {r['leaks']} | {r['reached']} | {r['connectable']} "
            f"| {r['unconnectable']} | {r['till_withdrawals']:,} | {r['till_withdrawals_exported']} "
            f"| {r['withheld']} | {r['withheld_by_others']} | {r['withheld_loose']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000, help="people in the generated world (default 20,000)")
    parser.add_argument("--seed", type=int, default=7, help="the world's random seed (default 7)")
    args = parser.parse_args()
    report = measure(args.customers, args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "consent.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "consent.md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
