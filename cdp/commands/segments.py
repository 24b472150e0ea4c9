"""`cdp segments list | preview | export`: marketer-written segments, counted and exported under consent."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from cdp.commands.common import DbOption, console, one_line_errors, settings_for

app = typer.Typer(help="Segments: list, preview counts under consent, export for a purpose.", no_args_is_help=True)

_REASON_LABELS = {
    "erased": "erased",
    "restricted": "restricted",
    "withdrawn": "withdrawn",
    "no_consent": "no consent",
    "no_contact_point": "no contact point",
    "shared_contact_point": "contact point shared with someone who said no",
}


@app.command("list")
@one_line_errors
def list_segments(
    segments_dir: Path | None = typer.Option(None, "--segments-dir", help="Folder of segment YAML files."),
    db: Path | None = DbOption,
) -> None:
    """Segment definitions (the built-in `all_customers` and every YAML file in the segments folder) with
    their customers before consent and, per purpose, how many may be contacted."""
    from consent.segments import SegmentError, load_segments, segment_counts, where_text
    from consent.state import connect_as_of_now, events_due

    settings = settings_for(db, segments_dir=segments_dir)
    found = load_segments(settings.segments_dir)
    con = connect_as_of_now(settings.db_path) if settings.db_path.exists() else None
    pending = events_due(con) if con is not None else 0
    # One block per segment, not a table: at 80 columns a seven-column table cut every name and purpose.
    # A segment that is invalid, or valid but failing on this data, is listed with its reason and the rest
    # are listed still; the exit code says so at the end.
    invalid = failed = 0
    try:
        for name, seg in found.items():
            if isinstance(seg, SegmentError):
                invalid += 1
                console.print(f"[red]{escape(name)}: invalid: {escape(str(seg))}[/red]")
                continue
            console.print(f"[bold]{escape(name)}[/bold]: {escape(seg.description or '-')}")
            if con is not None:
                try:
                    size, counts = segment_counts(con, seg)
                except SegmentError as exc:
                    failed += 1
                    console.print(f"  [red]failed: {escape(str(exc))}[/red]")
                else:
                    allowed = ", ".join(f"{p} {c['allowed']:,}" for p, c in counts.items())
                    console.print(f"  {size:,} customers; may be contacted: {allowed}")
            fields, activations = ", ".join(seg.fields) or "-", ", ".join(seg.activations) or "-"
            console.print(f"  where {escape(where_text(seg.where))}; fields {fields}; activations {activations}")
    finally:
        if con is not None:
            con.close()
    _note_pending(pending)
    console.print(f"{len(found)} segments in {settings.segments_dir} (including built-in all_customers)", end="")
    console.print((f", {invalid} invalid" if invalid else "") + (f", {failed} failed on the data" if failed else ""))
    if con is None:
        console.print(f"No store at {settings.db_path} yet: `cdp run --inbox DIR` first for the counts.")
    if not settings.segments_dir.is_dir():
        console.print(f"[yellow]No segments folder at {settings.segments_dir}[/yellow]: only the built-in is defined.")
    if invalid or failed:
        raise typer.Exit(1)  # listed above, each with its one-line reason


@app.command()
@one_line_errors
def preview(
    name: str = typer.Argument(..., help="Segment name (see `cdp segments list`)."),
    purpose: str | None = typer.Option(None, "--purpose", help="Only this purpose (default: every purpose)."),
    segments_dir: Path | None = typer.Option(None, "--segments-dir", help="Folder of segment YAML files."),
    db: Path | None = DbOption,
) -> None:
    """How many customers the segment holds, how many may be contacted per purpose, and why the rest may not."""
    from cdp.config import PURPOSE_CHANNEL, PURPOSES
    from consent import enforce
    from consent.segments import get_segment, segment_counts
    from consent.state import connect_as_of_now, events_due

    settings = settings_for(db, segments_dir=segments_dir)
    purposes = [purpose] if purpose else list(PURPOSES)
    for p in purposes:
        enforce.check_purpose(p)
    segment = get_segment(settings.segments_dir, name)
    con = connect_as_of_now(settings.db_path)
    try:
        pending = events_due(con)
        customers, by_purpose = segment_counts(con, segment, purposes)
        lines = []
        for p, counts in by_purpose.items():
            left_out = ", ".join(f"{_REASON_LABELS.get(r, r)} {counts[r]:,}" for r in enforce.reasons() if counts[r])
            lines.append(
                f"  {p:<17} ({PURPOSE_CHANNEL[p]}): {counts['allowed']:,} of {counts['candidates']:,} may be contacted"
                + (f"; left out: {left_out}" if left_out else "")
            )
    finally:
        con.close()
    console.print(f"Segment {segment.name}: {customers:,} customers before consent", soft_wrap=True)
    for line in lines:
        console.print(line, soft_wrap=True)
    _note_pending(pending)


def _note_pending(pending: int) -> None:
    """Say that the counts leave out consent events in force since the last run (the store could not be
    brought up to date: another process has it open); the export applies them."""
    from consent.state import pending_note

    if pending:
        console.print(f"[yellow]note:[/yellow] {pending_note(pending)}", soft_wrap=True)


@app.command("export")
@one_line_errors
def export_cmd(
    name: str = typer.Argument(..., help="Segment name (see `cdp segments list`)."),
    purpose: str = typer.Option(..., "--purpose", help="What the export is for, e.g. email_marketing."),
    out: Path = typer.Option(..., "--out", help="File to write: .csv or .parquet (created readable by you only)."),
    segments_dir: Path | None = typer.Option(None, "--segments-dir", help="Folder of segment YAML files."),
    db: Path | None = DbOption,
) -> None:
    """Write the segment's customers who may be contacted for PURPOSE now, and record the export."""
    from cdp.errors import check_output_file
    from cdp.store import connect
    from consent.export import export_format, export_segment

    settings = settings_for(db, segments_dir=segments_dir)
    export_format(out)
    check_output_file(out, "export")  # before any work: a directory would only fail at the final rename
    con = connect(settings.db_path, create=False)  # a mistyped --db is refused, not created empty
    try:
        result = export_segment(con, settings, name, purpose, out)
    finally:
        con.close()
    left_out = {k: v for k, v in result.counts.items() if k not in ("candidates", "allowed") and v}
    why = ", ".join(f"{_REASON_LABELS.get(k, k)} {v:,}" for k, v in left_out.items()) or "none"
    console.print(
        f"Exported {result.row_count:,} of {result.counts.get('candidates', 0):,} customers in {result.segment} "
        f"for {purpose} to {result.file} (left out: {why})."
    )
    console.print(f"Export {result.export_id} recorded in export_register; sha256 {result.file_hash}")
