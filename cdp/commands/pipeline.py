"""``cdp generate``, ``cdp run`` and ``cdp demo``: make an inbox, and run the pipeline over one."""

from __future__ import annotations

from pathlib import Path

import typer

from cdp.commands.common import DbOption, EngineOption, console, fail, one_line_errors, settings_for


def _print_run(outcome, con, db_path: Path, before: set[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The run's summary: what this run ingested (the batches not in ``before``), what the store holds. Returns
    what ``--strict`` counts: this run's rejected and unreadable files, and its failed warning-level checks."""
    from cdp.summary import rejected_files, summarise

    summary = summarise(con, before)
    rejected, earlier = rejected_files(con, before)
    console.print()
    console.print(f"[bold]Run {outcome.run_id[:8]}[/bold] finished in {outcome.seconds:.1f} s")
    for line in summary.lines():
        console.print(f"  {line}")
    passed = sum(ok for _, ok, _ in outcome.checks)
    console.print(f"  checks              {passed} passed, {len(outcome.checks) - passed} failed")
    for name, ok, severity in outcome.checks:
        if not ok:
            console.print(f"    [yellow]{severity.lower()}[/yellow]: {name}")
    for error in rejected:
        console.print(f"  [yellow]rejected file[/yellow] {error}")
    if earlier:
        console.print(f"  {earlier} file(s) rejected by earlier runs and not loaded since (ingest_batches.error)")
    listed = set(rejected)
    unreadable = [error for error in dict.fromkeys(outcome.file_errors) if error not in listed]
    for error in unreadable:  # a file that cannot be read at all: not in the ledger, retried next run
        console.print(f"  [yellow]unreadable file[/yellow] {error}")
    console.print(f"  store               {db_path}")
    warned = sum(not ok and severity != "ERROR" for _, ok, severity in outcome.checks)
    return {"rejected": len(rejected), "unreadable": len(unreadable), "warned": warned}


def run_and_report(
    inbox: Path,
    db: Path | None,
    quiet: bool = False,
    engine: str | None = None,
    full_refresh: bool = False,
    strict: bool = False,
) -> None:
    from cdp.errors import CdpError

    if not inbox.is_dir():
        what = "a file, not an inbox folder (one sub-folder per source)" if inbox.exists() else "no such inbox folder"
        raise CdpError(f"{inbox}: {what}")
    settings = settings_for(db, inbox=inbox, engine=engine)
    from cdp.store import connect
    from consent.erasure import finish_interrupted

    # A run creates the store when there is none; a --db that is not a DuckDB file (or is a directory), or a
    # store another process holds, is refused here in one line, before Dagster starts, rather than as a
    # failed asset. An erasure interrupted before its file rewrite is finished first. The connection stays
    # open until the summary is printed: the run's own connection shares it (one database per process),
    # and another `cdp run` started meanwhile is refused at this same line instead of failing step by step.
    con, finished = finish_interrupted(settings, connect(settings.db_path))
    try:
        for request_id in finished:
            console.print(f"Finished the interrupted erasure {request_id} (database file rewritten)")
        from pipelines.run import run_pipeline

        console.print(f"Materialising the asset graph for inbox {inbox} into {settings.db_path}")
        from cdp.summary import batch_ids

        before = batch_ids(con)
        outcome = run_pipeline(
            settings,
            inbox,
            echo=(lambda _m: None) if quiet else console.print,
            full_refresh=full_refresh,
            report_inbox=True,  # after the summary, below
        )
        problems = _print_run(outcome, con, settings.db_path, before)
    finally:
        con.close()
    from rich.markup import escape

    from cdp.ingest import inbox_notices

    notices = inbox_notices(inbox)
    for note in notices:
        console.print(f"  [yellow]{escape(note)}[/yellow]")
    if not outcome.success:
        fail(outcome.failure or "the run failed", code=1)
    problems["not_read"] = len(notices)
    if strict and any(problems.values()):
        labels = {"rejected": "file(s) rejected", "unreadable": "file(s) unreadable",
                  "warned": "warning-level check(s) failed", "not_read": "thing(s) in the inbox not read"}  # fmt: skip
        found = ", ".join(f"{n} {labels[k]}" for k, n in problems.items() if n)
        fail(f"--strict: {found} (listed above)", code=3)


#: Bounds of ``generate`` and ``demo``: ten million people is some 120 million source rows, far beyond one
#: machine's inbox; a seed is what numpy's generators take as a 32-bit seed.
MAX_PEOPLE, MAX_SEED = 10_000_000, 2**32 - 1


def register(app: typer.Typer) -> None:
    @app.command()
    @one_line_errors
    def generate(
        out: Path = typer.Option(..., "--out", help="Inbox folder to write (ground truth goes to OUT-truth/)."),
        customers: int = typer.Option(
            2000, "--customers", min=1, max=MAX_PEOPLE, help="Number of people in the world (at most 10 million)."
        ),
        seed: int = typer.Option(
            7, "--seed", min=0, max=MAX_SEED, help="Random seed (0 to 2^32-1); the same seed writes the same files."
        ),
        mode: str = typer.Option(
            "omnichannel",
            "--mode",
            help="omnichannel, or no_shared_ids (names, dates of birth, addresses only).",
        ),
    ) -> None:
        """Write a synthetic omnichannel inbox with its ground truth beside it."""
        from cdp.generate import generate_world

        if mode not in ("omnichannel", "no_shared_ids"):
            fail(f"--mode {mode!r}: expected omnichannel or no_shared_ids")
        with console.status("generating..."):
            summary = generate_world(out, customers=customers, seed=seed, mode=mode)
        console.print(str(summary))

    @app.command()
    @one_line_errors
    def run(
        inbox: Path = typer.Option(..., "--inbox", help="Inbox folder: one sub-folder per source."),
        db: Path | None = DbOption,
        engine: str | None = EngineOption,
        full_refresh: bool = typer.Option(
            False,
            "--full-refresh",
            help="Rebuild staging, identities, profiles and consent from every raw row instead of only what "
            "new batches changed.",
        ),
        strict: bool = typer.Option(
            False,
            "--strict",
            help="Exit 3 when the run rejected a file or could not read one, a warning-level check failed, or "
            "something in the inbox was not read (for schedulers that only see the exit code).",
        ),
    ) -> None:
        """Materialise the Dagster asset graph: ingest, validate, resolve identities, profiles, consent.

        Runs are incremental: new inbox files are ingested, and only the records, customers and consent
        they touch are re-resolved. A full rebuild happens on the first run, after an erasure or a change
        of model, threshold or limits, and with --full-refresh.
        """
        run_and_report(inbox, db, engine=engine, full_refresh=full_refresh, strict=strict)

    @app.command()
    @one_line_errors
    def demo(
        out: Path = typer.Option(Path("data/demo/inbox"), "--out", help="Where to write the sample inbox."),
        customers: int = typer.Option(2000, "--customers", min=1, max=MAX_PEOPLE, help="People in the sample world."),
        seed: int = typer.Option(
            7, "--seed", min=0, max=MAX_SEED, help="Random seed of the sample world; the same seed, the same demo."
        ),
        db: Path | None = DbOption,
    ) -> None:
        """Generate a sample inbox, run the whole pipeline, export a consented segment and erase one person.

        Everything it shows is what the other commands do: `cdp generate`, `cdp run`, `cdp segments export`
        and `cdp privacy erase`, called with the demo's paths.
        """
        from cdp.commands import privacy, segments
        from cdp.generate import generate_world

        with console.status("generating the sample inbox..."):
            summary = generate_world(out, customers=customers, seed=seed)
        console.print(str(summary))
        run_and_report(out, db)
        settings = settings_for(db)

        console.print("\n[bold]A consented export[/bold] (cdp segments export all_customers --purpose email_marketing)")
        export_file = out.parent / "exports" / "all_customers-email_marketing.csv"
        export_file.parent.mkdir(parents=True, exist_ok=True)
        segments.export_cmd("all_customers", "email_marketing", export_file, None, db)

        earlier = _earlier_erasure(settings.db_path)
        if earlier:  # a rerun on the same store: the demo erases one person, not one more each time
            console.print(
                f"\n[bold]An erasure[/bold]: this store already holds one, request {earlier}, so the demo erases "
                "nobody else (`cdp privacy requests` lists it; `make clean` starts the demo afresh)."
            )
        else:
            subject = _demo_subject(settings.db_path)
            console.print(f"\n[bold]An erasure[/bold] (cdp privacy erase --customer-id {subject} --yes)")
            privacy.erase(None, None, subject, False, True, db)
        shown = _demo_subject(settings.db_path)  # the erased customer is gone: the next one seen in three sources
        console.print(
            f"\nNext: `cdp profile show --customer-id {shown}`, `cdp segments preview lapsed_big_spenders`, "
            f"`cdp identity evaluate --truth {summary.truth}/records.csv`, `cdp privacy requests`, "
            "`make dev` for the Dagster UI."
        )


def _earlier_erasure(db_path: Path) -> str | None:
    """The first erasure carried out on this store, if any (the register exists once a run has made it)."""
    from cdp.store import connect, table_exists
    from consent.register import COMPLETED, REWRITE_PENDING

    con = connect(db_path, read_only=True)
    try:
        if not table_exists(con, "privacy_requests"):
            return None
        rows = con.execute(
            "SELECT request_id FROM privacy_requests WHERE kind = 'erasure' AND status IN (?, ?) "
            "ORDER BY received_at, request_id LIMIT 1",
            [COMPLETED, REWRITE_PENDING],
        ).fetchall()
    finally:
        con.close()
    return str(rows[0][0]) if rows else None


def _demo_subject(db_path: Path) -> str:
    """A customer seen in CRM, store and web or app: the kind of person an erasure must reach everywhere."""
    from cdp.store import connect

    con = connect(db_path, read_only=True)
    try:
        rows = con.execute(
            "SELECT customer_id FROM customer_source_records GROUP BY customer_id "
            "HAVING count(DISTINCT source) >= 3 ORDER BY count(*) DESC, customer_id LIMIT 1"
        ).fetchall()
    finally:
        con.close()
    if not rows:
        from cdp.errors import CdpError

        raise CdpError("the demo world has no customer seen in three sources; try a larger --customers")
    return str(rows[0][0])
