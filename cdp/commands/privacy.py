"""`cdp privacy ...`: erasure, access, restriction and the register of privacy requests.

Every command names the subject by exactly one of ``--email``, ``--phone`` or ``--customer-id`` and prints
only request ids, internal customer ids, table names and counts: never the identifiers themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cdp.commands.common import DbOption, console, one_line_errors, settings_for
from cdp.config import Settings

if TYPE_CHECKING:  # consent is imported inside the commands, so that `cdp --help` answers at once
    from consent.erasure import ErasurePlan, Subject

app = typer.Typer(help="Privacy requests: erasure, access, restriction, and their register.", no_args_is_help=True)

EmailOption = typer.Option(None, "--email", help="The subject's email address (any spelling of it).")
PhoneOption = typer.Option(None, "--phone", help="The subject's phone number (national or international).")
CustomerOption = typer.Option(None, "--customer-id", help="The subject's customer id.")


def _subject(settings: Settings, email: str | None, phone: str | None, customer_id: str | None) -> Subject:
    from consent.erasure import Subject

    return Subject.from_options(email, phone, customer_id, settings.default_region)


def _print_plan(plan: ErasurePlan) -> None:
    scope = plan.scope
    console.print(f"request [bold]{plan.request_id}[/bold]")
    console.print(f"customers: {len(scope.customers)}  " + ", ".join(scope.customers))
    if scope.former_customers:
        console.print(f"former customer ids merged into them: {len(scope.former_customers)}")
    if scope.seed_customers > 1:
        console.print(
            f"[yellow]warning:[/yellow] the identifier given links {scope.seed_customers} customers; "
            "erase each one by --customer-id after checking them"
        )
    by_source = ", ".join(f"{s} {n}" for s, n in scope.records_by_source.items()) or "none"
    console.print(f"records per source: {by_source}")
    links = ", ".join(f"{evidence} {n}" for evidence, n in scope.link_evidence.items()) or "none"
    console.print(f"identity links inside the cluster, by evidence: {links}")
    console.print("identifier types on those records (records carrying the type, distinct values):")
    for t, c in scope.identifier_types.items():
        notes = []
        if c["shared"]:
            notes.append(f"{c['shared']} shared with other customers: kept for them, not suppressed")
        if c["placeholder"]:
            notes.append(f"{c['placeholder']} placeholders: not suppressed")
        console.print(
            f"  {t}: {c['records']} records, {c['values']} values" + (f" ({'; '.join(notes)})" if notes else "")
        )
    console.print("rows per table:")
    for table, n in plan.table_counts.items():
        if n:
            console.print(f"  {table}: {n}")
    console.print(f"total rows: {plan.total}; identifiers to suppress: {sum(plan.suppress.values())}")
    if scope.extra_values:
        console.print(f"values beyond the contract on other people's rows that name the subject: {scope.extra_values}")
    if scope.shared_consent_events:
        console.print(
            f"consent events that also name other people's identifiers: {scope.shared_consent_events} "
            "(kept for them, without the subject's identifiers)"
        )
    if plan.formerly_shared:
        from consent.erasure import formerly_shared_message

        then = "erase by --customer-id after checking"
        console.print(
            f"[yellow]warning:[/yellow] {formerly_shared_message(plan.formerly_shared, 'the customers above', then)}"
        )
    _print_exports(plan.exports)
    _print_access_documents(plan.access_documents)


def _print_access_documents(documents: list[dict[str, Any]]) -> None:
    """Access documents written earlier for the subject: copies of their data outside the store."""
    if not documents:
        return
    console.print(f"access documents written earlier for the subject ({len(documents)}), to delete where kept:")
    for d in documents:
        where = "present" if d["present"] else "not on this machine"
        console.print(f"  request {d['request_id']}  {d['written_at']}  {d['file']} ({where})")


def _print_exports(exports: list[dict[str, Any]]) -> None:
    if not exports:
        console.print("exports that contained the subject: none")
        return
    console.print(f"exports that contained the subject ({len(exports)}), to recall from their recipients:")
    for e in exports:
        exists = "present" if e.get("file") and Path(str(e["file"])).exists() else "not on this machine"
        exists = str(e.get("copy", exists))  # after erasure: what happened to the platform's copy
        console.print(
            f"  {e.get('export_id')}  {e.get('exported_at')}  segment {e.get('segment')}  "
            f"purpose {e.get('purpose')}  file {e.get('file')} ({exists})"
        )


@app.command()
@one_line_errors
def erase(
    email: str | None = EmailOption,
    phone: str | None = PhoneOption,
    customer_id: str | None = CustomerOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be erased (registers the request)."),
    yes: bool = typer.Option(False, "--yes", help="Erase without asking for confirmation."),
    db: Path | None = DbOption,
) -> None:
    """Right to erasure: show what will go, then erase it everywhere and suppress re-ingestion."""
    from consent import erasure

    settings = settings_for(db)
    subject = _subject(settings, email, phone, customer_id)
    if dry_run or not yes:
        report = erasure.erase(settings, subject, dry_run=True)
        _print_plan(report.plan)
        if dry_run:
            console.print("dry run: nothing erased")
            return
        if not typer.confirm(f"Erase all of this for request {report.request_id}?", default=False):
            console.print(
                f"not erased; request {report.request_id} stays open (if it will not be carried out: "
                f"cdp privacy close {report.request_id} --outcome refused|withdrawn)"
            )
            raise typer.Exit(1)
    report = erasure.erase(settings, subject, dry_run=False)
    console.print(f"[bold]erasure receipt[/bold] request {report.request_id}")
    for table, n in report.deleted.items():
        if n:
            console.print(f"  {table}: {n} rows deleted")
    console.print(f"total rows deleted: {sum(report.deleted.values())}")
    if report.plan.scope.extra_values:
        console.print(
            f"values naming the subject removed from other people's rows (columns beyond the contract): "
            f"{report.plan.scope.extra_values}"
        )
    suppressed = ", ".join(f"{t} {n}" for t, n in report.suppressed.items()) or "none"
    console.print(f"suppressed identifier hashes (re-ingestion drops them): {suppressed}")
    _print_exports(report.plan.exports)
    _print_access_documents(report.plan.access_documents)
    console.print(
        f"database file rewritten: {settings.db_path} ({report.file_bytes} bytes, {report.free_blocks} free "
        "blocks); the old file and its write-ahead log were removed"
    )


@app.command()
@one_line_errors
def access(
    out: Path = typer.Option(..., "--out", help="JSON file to write (readable by its owner only)."),
    email: str | None = EmailOption,
    phone: str | None = PhoneOption,
    customer_id: str | None = CustomerOption,
    db: Path | None = DbOption,
) -> None:
    """Right of access / portability: everything held on the subject, as JSON."""
    from consent.access import access as run_access

    settings = settings_for(db)
    result = run_access(settings, _subject(settings, email, phone, customer_id), out)
    console.print(
        f"request {result.request_id}: {result.customers} customers, {result.records} source records -> {result.path}"
    )
    for name, n in result.counts.items():
        console.print(f"  {name}: {n}")
    if not any(result.counts.values()):
        console.print("Nothing is held on the subject: the document says so, and it is the answer to give them.")


@app.command()
@one_line_errors
def restrict(
    email: str | None = EmailOption,
    phone: str | None = PhoneOption,
    customer_id: str | None = CustomerOption,
    kind: str = typer.Option("restriction", "--kind", help="restriction (Art. 18) or objection (Art. 21)."),
    db: Path | None = DbOption,
) -> None:
    """Keep the subject's data but exclude them from every export and segment."""
    from consent.restriction import restrict as run_restrict

    settings = settings_for(db)
    result = run_restrict(settings, _subject(settings, email, phone, customer_id), kind)
    console.print(f"request {result.request_id}: {kind} active for {result.customers} customers ({result.changed} new)")


@app.command()
@one_line_errors
def unrestrict(
    email: str | None = EmailOption,
    phone: str | None = PhoneOption,
    customer_id: str | None = CustomerOption,
    kind: str = typer.Option(None, "--kind", help="Lift only this kind (restriction or objection)."),
    db: Path | None = DbOption,
) -> None:
    """Lift the subject's restriction or objection."""
    from consent.restriction import unrestrict as run_unrestrict

    settings = settings_for(db)
    result = run_unrestrict(settings, _subject(settings, email, phone, customer_id), kind)
    console.print(f"request {result.request_id}: {result.changed} restrictions lifted")


@app.command()
@one_line_errors
def close(
    request_id: str = typer.Argument(..., help="The request's id, as `cdp privacy requests` lists it."),
    outcome: str = typer.Option(
        ...,
        "--outcome",
        help="refused (the subject could not be told apart from others or verified) or withdrawn (by the subject).",
    ),
    db: Path | None = DbOption,
) -> None:
    """Close an open request that will not be carried out, with its outcome and today as its date."""
    from cdp.store import connect, transaction
    from consent import register

    settings = settings_for(db)
    request_id, outcome = request_id.strip(), outcome.strip().lower()
    con = connect(settings.db_path, create=False)
    try:
        with transaction(con):
            register.close_request(con, request_id, outcome)
    finally:
        con.close()
    console.print(f"request {request_id}: closed as {outcome}")


@app.command()
@one_line_errors
def requests(db: Path = DbOption) -> None:
    """The register of privacy requests and their outcome; overdue ones are flagged."""
    from cdp.store import connect
    from consent import register
    from consent.erasure import finish_interrupted

    settings = settings_for(db)
    con = connect(settings.db_path, create=False)  # writable: the register's tables are created on first use
    try:
        con, _ = finish_interrupted(settings, con)  # an interrupted erasure's rewrite, before it is listed
        rows = register.list_requests(con)
    finally:
        con.close()
    # Plain fixed-width lines rather than a table: request ids must never be cut by a narrow terminal.
    console.print(
        f"{'request':<20} {'kind':<16} {'received':<16}  {'due':<10}  {'completed':<16}  {'status':<15} records"
    )
    for r in rows:
        completed = f"{r['completed_at']:%Y-%m-%d %H:%M}" if r["completed_at"] else "-"
        records = "-" if r["records_affected"] is None else str(r["records_affected"])
        flag = "  [red]OVERDUE[/red]" if r["overdue"] else ""
        console.print(
            f"{r['request_id']:<20} {r['kind']:<16} {r['received_at']:%Y-%m-%d %H:%M}  {r['due_at']:%Y-%m-%d}  "
            f"{completed:<16}  {r['status']:<15} {records:>7}{flag}",
            soft_wrap=True,
        )
    overdue = sum(r["overdue"] for r in rows)
    console.print(f"{len(rows)} requests, {overdue} overdue")
