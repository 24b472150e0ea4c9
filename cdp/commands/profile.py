"""`cdp profile show`: one unified profile with its linked source records and consent."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import typer
from rich.table import Table

from cdp.commands.common import DbOption, console, one_line_errors, settings_for

app = typer.Typer(help="Unified customer profiles.", no_args_is_help=True)

_SHOWN = ("first_name", "last_name", "email", "phone", "date_of_birth", "address_line1", "city", "postcode", "country")
_TRAITS = (
    "first_seen", "last_seen", "channels", "orders", "total_spend", "average_order_value", "first_purchase_at",
    "last_purchase_at", "stores_visited", "device_id", "source_records", "orders_in_other_currencies",
)  # fmt: skip


def _text(value: object) -> str:
    """A cell: lists joined, missing values as a dash."""
    if isinstance(value, str):
        return value
    if hasattr(value, "__len__"):  # lists and arrays (channels)
        return ", ".join(map(str, value)) or "-"  # type: ignore[call-overload]  # has __len__: iterable here
    return "-" if value is None or pd.isna(value) else str(value)  # type: ignore[call-overload]  # scalars


@app.command()
@one_line_errors
def show(
    email: str | None = typer.Option(None, "--email", help="Any email of the customer (dots and +tags ignored)."),
    phone: str | None = typer.Option(None, "--phone", help="Any phone number of the customer, national or +E.164."),
    customer_id: str | None = typer.Option(None, "--customer-id", help="The customer id."),
    records: int = typer.Option(20, "--records", min=0, help="How many linked source records to list (newest first)."),
    db: Path | None = DbOption,
) -> None:
    """One unified profile: the chosen values and where they came from, traits, source records, consent."""
    from cdp.store import connect
    from identity.profiles import find_customers, profile_detail
    from identity.standardise import normalise_customer_id

    settings = settings_for(db)
    con = connect(settings.db_path, read_only=True)
    try:
        ids = find_customers(con, email=email, phone=phone, customer_id=customer_id, region=settings.default_region)
        if not ids:
            console.print("No customer found.")
            raise typer.Exit(1)
        if len(ids) > 1:
            console.print(f"{len(ids)} customers carry this identifier (a shared household phone or device?).")
        asked = normalise_customer_id(customer_id) if customer_id else None
        if asked and ids != [asked]:  # a retired id, followed through customer_id_history
            console.print(f"{asked} is no longer a customer id: its records are now {' and '.join(ids)}'s.")
        for cid in ids:
            detail = profile_detail(con, cid)
            _print_profile(detail, records)
            _print_consent(con, cid)
    finally:
        con.close()


def _print_profile(detail: dict[str, object], limit: int) -> None:
    console.rule(f"customer {detail['customer_id']}")
    fields = Table("field", "value", "source", "as of", box=None, pad_edge=False)
    for name in _SHOWN:
        value = _text(detail.get(name))
        if name == "date_of_birth":
            value = value[:10]  # a DATE, read back by pandas as a midnight timestamp
        fields.add_row(name, value, _text(detail.get(f"{name}_source")), _text(detail.get(f"{name}_at")))
    console.print(fields)
    traits = Table("trait", "value", box=None, pad_edge=False)
    for name in _TRAITS:
        traits.add_row(name, _text(detail.get(name)))
    console.print(traits)
    recs = detail["records"]
    assert isinstance(recs, pd.DataFrame)  # profile_detail always returns a frame here
    console.print(f"Linked source records: {len(recs)}" + (f" (newest {limit} shown)" if len(recs) > limit else ""))
    table = Table("source", "record", "time", "event", "email", "phone", "name", "order", "amount", box=None)
    for r in recs.head(limit).itertuples():
        name = " ".join(x for x in (r.first_name, r.last_name) if isinstance(x, str))
        table.add_row(
            r.source, r.source_record_id, _text(r.record_time), _text(r.event_type), _text(r.email),
            _text(r.phone_e164), name or "-", _text(r.order_id), _text(r.amount),
        )  # fmt: skip
    console.print(table)


def _print_consent(con: duckdb.DuckDBPyConnection, customer_id: str) -> None:
    """Consent per purpose and whether an export for it would include the customer now (consent/enforce)."""
    from cdp.config import PURPOSES
    from cdp.store import table_exists
    from consent import enforce

    state: dict[str, tuple] = {}
    if table_exists(con, "consent_state"):
        rows = con.execute(
            "SELECT purpose, status, updated_at, source, via FROM consent_state WHERE customer_id = ?", [customer_id]
        ).fetchall()
        state = {r[0]: r[1:] for r in rows}
    table = Table("purpose", "consent", "since", "source", "via", "may be contacted", box=None, pad_edge=False)
    frame = pd.DataFrame({"customer_id": [customer_id]})
    for purpose in PURPOSES:
        status, since, source, via = state.get(purpose, ("no consent", None, None, None))
        why = enforce.decide(con, purpose, frame)["excluded_because"].iloc[0]
        table.add_row(
            purpose, status, _text(since), _text(source), _text(via), "yes" if pd.isna(why) else f"no ({why})"
        )
    console.print(table)
