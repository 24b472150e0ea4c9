"""``make bench`` (incremental part): a 1% batch on a base world, incremental vs full rebuild.

    python -m bench.incremental                      # 1M-record base, 1% batch
    python -m bench.incremental --records 100000     # a smaller base
    python -m bench.incremental --dagster-in-memory  # the same without Dagster's sqlite run storage

A world is generated, and the newest rows of every source (``--fraction`` of the source's rows, taken
from its latest file) are held back as the new batch. The base is run through the pipeline; the batch is
then added and run incrementally; base and batch run ``--repeats`` times, alternating, each base on a fresh
store and each batch on the store its base left (a run's time varies by the minute on a shared machine; the
median run of each is reported, with the others and each batch's share of the base it ran after); the same
inbox is run once more, with nothing new in it (what every run costs whatever the batch); the same store is
finally rebuilt in full (``--full-refresh``) to check that the incremental runs gave the same customers.
Results go to ``bench/results/incremental.{json,md}``.

``--dagster-in-memory`` runs every step on an in-memory Dagster instance (no run history for the UI) to
show what Dagster's sqlite event log costs; its results go to ``incremental-dagster-in-memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = ROOT / "work"
SOURCES = ("web", "app", "store", "crm", "consent")


#: Derived tables an incremental run updates, as a full refresh would build them (times of computing aside).
_COMPARED = {
    "customer_profiles": "SELECT * FROM customer_profiles",
    "consent_state": "SELECT * EXCLUDE (computed_at) FROM consent_state",
}


def _stages(outcome) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {run.step: round(run.seconds, 2) for run in outcome.steps}


def run_step(work: Path, step: str, in_memory: bool = False, store: Path | None = None) -> dict:
    """One step of the benchmark, in this process: ``base``, ``batch``, ``again`` (nothing new), ``rebuild`` or
    ``one_row`` (see :func:`_one_row_per_source`), on the inbox of ``work`` and the store (DuckDB file and Dagster
    home) in ``store``, by default ``work`` too."""
    loading = time.perf_counter()
    from cdp.config import load_settings
    from cdp.store import connect
    from pipelines.run import run_pipeline

    load_s = time.perf_counter() - loading  # the code location: Dagster, Great Expectations, the assets

    inbox, store = work / "inbox", store or work
    settings = load_settings(db_path=store / "cdp.duckdb", home=store / "home", inbox=inbox)
    if step == "batch":
        for source, f in _batch_files(work):
            shutil.copyfile(f, inbox / source / f.name)
    before = None
    if step == "rebuild":  # what the incremental run left, to compare with what a full refresh builds
        con = connect(settings.db_path, read_only=True)
        before = con.execute("SELECT source, source_record_id, customer_id FROM customer_source_records").df()
        for table, query in _COMPARED.items():
            con.execute(f"COPY ({query}) TO '{work / table}.parquet' (FORMAT parquet)")  # bench paths
        con.close()
    instance = None
    if in_memory:
        import dagster as dg

        instance = dg.DagsterInstance.ephemeral()
    outcome = run_pipeline(settings, inbox, echo=lambda _m: None, full_refresh=step == "rebuild", instance=instance)
    from identity.resolve import last_run_stats

    con = connect(settings.db_path, read_only=True)
    try:
        identity = last_run_stats(con)
        records = int(con.execute("SELECT count(*) FROM stg_records").fetchall()[0][0])
        result: dict = {
            "step": step,
            "success": outcome.success,
            "failure": outcome.failure,
            "seconds": round(outcome.seconds, 2),
            "load_s": round(load_s, 2),
            "steps_s": _stages(outcome),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "records": records,
            "identity": {
                k: identity.get(k)
                for k in (
                    "mode",
                    "full_reason",
                    "changed_units",
                    "identity_changed_units",
                    "region_units",
                    "changed_customers",
                    "customers",
                    "new_customers",
                    "merged",
                    "split",
                    "seconds",
                )
            },  # fmt: skip
        }
        if before is not None:
            after = con.execute("SELECT source, source_record_id, customer_id FROM customer_source_records").df()
            joined = before.merge(after, on=["source", "source_record_id"], how="outer", suffixes=("_inc", "_full"))
            result["records_with_another_customer_after_rebuild"] = int(
                (joined["customer_id_inc"] != joined["customer_id_full"]).sum()
            )
            for table, query in _COMPARED.items():
                snapshot = f"read_parquet('{work / table}.parquet')"
                result[f"{table}_rows_differing_after_rebuild"] = int(
                    con.execute(
                        f"SELECT (SELECT count(*) FROM ({query} EXCEPT ALL SELECT * FROM {snapshot})) "
                        f"+ (SELECT count(*) FROM (SELECT * FROM {snapshot} EXCEPT ALL {query}))"
                    ).fetchall()[0][0]
                )
    finally:
        con.close()
    return result


def main() -> None:
    from bench.run import ROWS_PER_PERSON, in_fresh_process, machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5, help="base and batch runs, alternating (default %(default)s)")
    parser.add_argument("--dagster-in-memory", action="store_true", help="run on an in-memory Dagster instance")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step, print JSON
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)  # the store's folder, if not --work
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.work, args.step, args.dagster_in_memory, args.store)))
        return

    from cdp.generate import generate_world, split_inbox

    work = WORK / f"incremental-{args.records}"
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    generate_world(work / "world", customers=max(100, round(args.records / ROWS_PER_PERSON)), seed=args.seed)
    held = split_inbox(work / "world", work / "inbox", work / "batch", args.fraction)
    print(f"bench: world generated in {time.perf_counter() - started:.0f} s; batch rows held back: {held}", flush=True)

    def run(step: str, store: Path = work) -> dict:
        step_args = ["bench.incremental", "--step", step, "--work", str(work), "--store", str(store)]
        return in_fresh_process(step_args + (["--dagster-in-memory"] if args.dagster_in_memory else []), step)

    # The base and the batch alternate, each base on a fresh store and each batch on the store its base left:
    # the machine's speed drifts by the minute, and a share of one base run against batches run minutes later
    # moved by a point from one bench to the next.
    bases, batches = [], []
    for repeat in range(max(1, args.repeats)):
        if repeat:
            _fresh_base(work)
        bases.append(run("base"))
        if not repeat:
            _keep_base(work)  # for the one-row run, and for profiling a batch by hand on a copy of a base
        batches.append(run("batch"))
    one_row = _one_row_per_source(work, run)
    steps = [_median(bases), _median(batches), run("again"), run("rebuild")]
    report = {
        "machine": machine(), "fraction": args.fraction, "batch_rows": held, "steps": steps, "one_row": one_row,
        "base_seconds": [r["seconds"] for r in bases], "batch_seconds": [r["seconds"] for r in batches],
        "dagster_instance": "in-memory" if args.dagster_in_memory else "project (sqlite run storage)",
    }  # fmt: skip
    name = "incremental-dagster-in-memory" if args.dagster_in_memory else "incremental"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(to_markdown(report))
    print((RESULTS / f"{name}.md").read_text())


def _copy_store(source: Path, target: Path) -> None:
    """The DuckDB file (and any WAL) and the Dagster home of ``source``, copied over ``target``'s, synced:
    otherwise the next run's first checkpoint also writes the copy's dirty pages out (~0.3 s)."""
    target.mkdir(exist_ok=True)
    for stale in target.glob("cdp.duckdb*"):
        stale.unlink()
    shutil.rmtree(target / "home", ignore_errors=True)
    for f in source.glob("cdp.duckdb*"):
        shutil.copyfile(f, target / f.name)
    shutil.copytree(source / "home", target / "home")
    os.sync()


def _one_row_per_source(work: Path, run: Callable[..., dict]) -> dict:
    """What any change costs, whatever its size: a copy of the first base's store, and the base's inbox with the
    first row of each of the batch's files instead of the batch (under the same paths, so that the base's files
    are known unread by their size and times, as in a daily run). The inbox is left as the batch's steps need it."""
    for source, f in _batch_files(work):
        (work / "inbox" / source / f.name).unlink(missing_ok=True)
        lines = f.read_text().splitlines(keepends=True)
        keep = 2 if f.suffix == ".csv" else 1  # a CSV's header and first row, a JSON lines file's first line
        (work / "inbox" / source / f"one-row-{f.name}").write_text("".join(lines[:keep]))
    _copy_store(work / "base-copy", work / "one-row")
    try:
        return run("one_row", work / "one-row")
    finally:
        shutil.rmtree(work / "one-row", ignore_errors=True)
        for source, f in _batch_files(work):
            (work / "inbox" / source / f"one-row-{f.name}").unlink()
            shutil.copyfile(f, work / "inbox" / source / f.name)


def _batch_files(work: Path) -> list[tuple[str, Path]]:
    """(source, file) of every file of the batch held back in ``work/batch``."""
    return [(source, f) for source in SOURCES for f in sorted((work / "batch" / source).iterdir())]


def _keep_base(work: Path) -> None:
    """Copy the first base run's store and Dagster home aside (``base-copy``): the one-row run starts from it."""
    _copy_store(work, work / "base-copy")


def _fresh_base(work: Path) -> None:
    """No store and no Dagster home, and the inbox without the batch's files: as before the first base run."""
    for source, f in _batch_files(work):
        (work / "inbox" / source / f.name).unlink(missing_ok=True)
    for stale in work.glob("cdp.duckdb*"):
        stale.unlink()
    shutil.rmtree(work / "home", ignore_errors=True)
    os.sync()


def pair_shares(bases: list[float], batches: list[float]) -> list[float]:
    """Each batch's seconds as a share of the base it ran after (the runs alternate: base, batch, base, ...)."""
    return [batch / base for base, batch in zip(bases, batches, strict=True)]


def _median(runs: list[dict]) -> dict:
    """The run of median seconds (the lower middle one of an even number)."""
    return sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]


def to_markdown(report: dict) -> str:
    base, batch, again, rebuild = report["steps"]
    host = report["machine"]
    rows = sum(report["batch_rows"].values())
    lines = [
        f"Machine: {host['cpus']} cores, {host['memory_gb']} GB, Python {host['python']}. "
        f"Dagster instance: {report.get('dagster_instance', 'project (sqlite run storage)')}.",
        "",
        f"Base: {base['records']:,} staged records. New batch: {rows:,} source rows "
        f"({report['fraction']:.0%} of every source, its newest rows).",
        "",
        "| run | mode | seconds | share of the base's full run | with code loading: s | share "
        "| identity s | units re-resolved | peak MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    one_row = report.get("one_row")
    runs = (
        ("base, first run on a fresh store", base),
        ("new batch", batch),
        *((("one row of each of the batch's files, on a copy of the base", one_row),) if one_row else ()),
        ("same inbox again, nothing new", again),
        ("full refresh after them", rebuild),
    )
    for label, r in runs:
        ident = r["identity"]
        region = ident.get("region_units")
        loaded, base_loaded = r["seconds"] + r["load_s"], base["seconds"] + base["load_s"]
        lines.append(
            f"| {label} | {ident['mode']} | {r['seconds']} | {r['seconds'] / base['seconds']:.1%} "
            f"| {loaded:.2f} | {loaded / base_loaded:.1%} "
            f"| {ident['seconds']} | {'all' if region is None else f'{region:,}'} | {r['peak_rss_mb']:,} |"
        )
    runs_s = report.get("batch_seconds") or [batch["seconds"]]
    bases_s = report.get("base_seconds") or [base["seconds"]]
    shares = pair_shares(bases_s, runs_s)
    lines += [
        "",
        f"The base and the new batch ran {len(runs_s)} times each, alternating (each base on a fresh store, each "
        f"batch on the store its base left): base {', '.join(f'{s:.2f}' for s in bases_s)} s, batch "
        f"{', '.join(f'{s:.2f}' for s in runs_s)} s; the table shows the median run of each. Each batch against "
        f"the base it ran after: {', '.join(f'{s:.1%}' for s in shares)} (median {statistics.median(shares):.1%}; "
        f"{sum(round(s, 3) >= 0.1 for s in shares)} of {len(shares)} at 10.0% or more).",  # as printed
        "",
        f"What every run costs whatever its batch (the run with nothing new): {again['seconds'] / base['seconds']:.1%} "
        f"of the base's full run; the batch's own work (the batch's run less that): "
        f"{(batch['seconds'] - again['seconds']) / base['seconds']:.1%}."
        + (
            f" What any change costs, whatever its size (one row of each of the batch's files): "
            f"{one_row['seconds'] / base['seconds']:.1%}."
            if one_row
            else ""
        ),
        "",
        "Seconds are those of the Dagster run; *with code loading* adds the import of the pipeline's code "
        "location (Dagster, Great Expectations, the assets) that a fresh process such as `cdp run` pays first.",
        "",
        f"Rows that differ between the incremental runs and the full refresh after them: "
        f"customer_source_records {rebuild.get('records_with_another_customer_after_rebuild')}, "
        f"customer_profiles {rebuild.get('customer_profiles_rows_differing_after_rebuild')}, "
        f"consent_state {rebuild.get('consent_state_rows_differing_after_rebuild')}.",
        "",
        "Steps of the incremental run (seconds):",
        "",
        "| step | s |",
        "|---|---:|",
    ]
    lines += [f"| {step} | {took} |" for step, took in batch["steps_s"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
