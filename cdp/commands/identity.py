"""`cdp identity ...`: train the person model, measure the resolution, explain a pair of records."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cdp.commands.common import DbOption, EngineOption, console, one_line_errors, settings_for

app = typer.Typer(help="Identity resolution: train the model, evaluate against labels, explain.", no_args_is_help=True)


@app.command()
@one_line_errors
def train(
    db: Path | None = DbOption,
    out: Path | None = typer.Option(
        None, "--out", help="Model JSON to write (default: identity/models/person_v1.json)."
    ),
    seed: int = typer.Option(42, "--seed", help="Seed of u sampling."),
    u_max_pairs: int = typer.Option(5_000_000, "--u-max-pairs", min=1000, help="Random pairs sampled to estimate u."),
    also: list[Path] = typer.Option(
        [], "--also", help="Another store whose person records join the training data (repeatable)."
    ),
    engine: str | None = EngineOption,
) -> None:
    """Retrain the Splink person model on the store's staged records and rewrite its JSON."""
    from cdp.store import connect
    from identity.model import MODEL_PATH, train_model

    settings = settings_for(db, engine=engine)
    target = out or MODEL_PATH
    spark = None
    if settings.engine == "spark":
        from identity.spark import spark_session

        spark = spark_session(settings.spark_master, staging=settings.spark_staging)
    con = connect(settings.db_path, read_only=True)
    others = [connect(path, read_only=True) for path in also]
    try:
        names = ", ".join(str(p) for p in [settings.db_path, *also])
        console.print(f"Training on {names} with {settings.engine} (prior, u by sampling, m by EM)...")
        meta = train_model(
            con, target, seed=seed, u_max_pairs=u_max_pairs, threads=settings.threads, also=others, spark=spark,
            block_limit=settings.max_units_per_block, progress=console.print,
        )  # fmt: skip
    finally:
        con.close()
        for other in others:
            other.close()
    table = [p for p in meta["parameters"] if p["match_weight"] is not None]
    for p in table:
        console.print(
            f"  {p['comparison']:<9} {p['level']:<36} m={p['m']:.4f} u={p['u']:.6f} w={p['match_weight']:+.2f}"
        )
    if meta["units_in_crowds_left_out"]:
        console.print(
            f"  left out: {meta['units_in_crowds_left_out']:,} person units in {meta['crowded_blocks']} blocks "
            f"of more than {meta['block_limit']:,} (setting max_units_per_block)"
        )
    console.print(f"Saved {target} ({meta['n_units']:,} person units, {meta['train_seconds']} s).")


@app.command()
@one_line_errors
def evaluate(
    truth: Path = typer.Option(
        ...,
        "--truth",
        help="Truth CSV: source, source_record_id, unit_id, person_id, connectable, evidence_group.",
    ),
    db: Path | None = DbOption,
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    allow_unmatched: bool = typer.Option(
        False, "--allow-unmatched", help="Score a truth file even when most of its records are not in the store."
    ),
) -> None:
    """Pairwise precision, recall and F1 over identity units, plus over-merged and split customers."""
    from cdp.store import connect
    from identity.evaluate import evaluate as run_evaluation

    settings = settings_for(db)
    con = connect(settings.db_path, read_only=True)
    try:
        m = run_evaluation(con, truth, allow_unmatched=allow_unmatched)
    finally:
        con.close()
    if as_json:
        console.print_json(json.dumps(m))
        return
    console.print(f"Units {m['units']:,} ({m['connectable_units']:,} connectable), persons {m['persons']:,}, "
                  f"customers {m['customers']:,}")  # fmt: skip
    console.print(f"Precision {m['precision']:.4f}  recall {m['recall']:.4f}  F1 {m['f1']:.4f}")
    console.print(
        f"Recall over connectable pairs {m['recall_connectable']:.4f} ({m['connectable_pairs_linked']:,} of "
        f"{m['connectable_pairs']:,} pairs some evidence joins)  F1 {m['f1_connectable']:.4f}"
    )
    console.print(f"Over-merged customers {m['over_merged_customers']:,}  split persons {m['split_persons']:,} "
                  f"({m['split_connectable_persons']:,} connectable)")  # fmt: skip
    if m["truth_records_unmatched"]:
        console.print(f"[yellow]{m['truth_records_unmatched']:,} truth records are not in the store[/yellow]")


@app.command()
@one_line_errors
def explain(
    a: str = typer.Option(..., "--a", help="First record as SOURCE:ID (e.g. crm:C000123)."),
    b: str = typer.Option(..., "--b", help="Second record as SOURCE:ID."),
    db: Path | None = DbOption,
    chart: Path | None = typer.Option(None, "--chart", help="Save Splink's waterfall chart here (HTML)."),
) -> None:
    """Why two records are, or are not, the same customer: identifier path and Splink match weights."""
    from cdp.store import connect
    from identity.explain import explain_pair, parse_ref

    settings = settings_for(db)
    ref_a, ref_b = parse_ref(a), parse_ref(b)
    chart_path = chart or settings.home / "explain" / "waterfall.html"
    chart_path.parent.mkdir(parents=True, exist_ok=True)
    con = connect(settings.db_path, read_only=True)
    try:
        result = explain_pair(con, ref_a, ref_b, chart_path)
    finally:
        con.close()
    verdict = "the SAME customer" if result.same_customer else "DIFFERENT customers"
    console.print(f"{a} (unit {result.unit_a}) and {b} (unit {result.unit_b}) are {verdict}: "
                  f"{result.customer_a} / {result.customer_b}")  # fmt: skip
    if result.path:
        console.print("Path of evidence:")
        for step in result.path:
            why = (f"splink match weight {step['match_weight']:.1f}" if step["evidence"] == "splink"
                   else f"shared {step['evidence']} ({step['rule']})")  # fmt: skip
            console.print(f"  {step['from']} -> {step['to']}: {why}")
    elif result.same_customer and result.path == [] and result.unit_a != result.unit_b:
        console.print("[yellow]no stored edge path (edges are from the last run)[/yellow]")
    if result.splink:
        s = result.splink
        console.print(f"Splink: match weight {s['match_weight']:+.2f} (probability {s['match_probability']:.4f})")
        for name, c in s["comparisons"].items():
            weight = "null" if c["weight"] is None else f"{c['weight']:+.2f}"
            console.print(f"  {name:<9} {c['label'] or '':<36} {weight}")
        if result.chart:
            console.print(f"Waterfall chart: {result.chart}")
    for note in result.notes:
        console.print(note)
