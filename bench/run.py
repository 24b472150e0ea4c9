"""``make bench``: the whole pipeline on generated worlds of growing size, timed per stage.

Each size runs in its own process (so its peak memory is its own): generate an inbox, materialise the
asset graph through Dagster exactly as ``cdp run`` does, then evaluate identity resolution against the
world's ground truth. Results go to ``bench/results/pipeline.json`` and ``bench/results/pipeline.md``,
which the README quotes.

    python -m bench.run                       # 100k, 300k and 1M source records
    python -m bench.run --records 100000      # one size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = ROOT / "work"
#: Source rows per generated person (web, app, store, CRM and consent rows), measured on the generator.
ROWS_PER_PERSON = 12.75
STAGES = {
    "ingest": ("raw_web", "raw_app", "raw_store", "raw_crm", "raw_consent"),
    "standardise": ("stg_records", "stg_consent"),
    "link_and_cluster": ("customer_source_records",),
    "profiles": ("customer_profiles",),
    "consent": ("consent_events", "consent_state"),
}


class RssSampler:
    """Samples this process's resident memory (DuckDB's buffers included: they live in the process) every
    ``interval`` seconds on a thread of its own, so that the peak of any span of the run can be read after it."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (time.perf_counter(), resident bytes)
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._rss()))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter(), self._rss()))

    def peak_mb(self, spans: list[tuple[float, float]]) -> int | None:
        """Highest resident memory sampled within any of ``spans`` ((start, end) perf_counter pairs)."""
        inside = [rss for t, rss in self.samples if any(start <= t <= end for start, end in spans)]
        return round(max(inside) / 2**20) if inside else None


def run_one(records: int, seed: int) -> dict:
    """Generate and run one world in this process; returns its figures."""
    from cdp.config import load_settings
    from cdp.generate import generate_world
    from cdp.store import connect

    loading = time.perf_counter()
    from pipelines.run import run_pipeline

    load_s = time.perf_counter() - loading  # the code location: Dagster, Great Expectations, the assets

    customers = max(100, round(records / ROWS_PER_PERSON))
    work = WORK / f"{records}"
    shutil.rmtree(work, ignore_errors=True)
    inbox = work / "inbox"
    started = time.perf_counter()
    generate_world(inbox, customers=customers, seed=seed)
    generate_s = time.perf_counter() - started
    settings = load_settings(db_path=work / "cdp.duckdb", home=work / "home", inbox=inbox)
    with RssSampler() as sampler:
        outcome = run_pipeline(settings, inbox, echo=lambda _m: None)
    step_s = {run.step: run.seconds for run in outcome.steps}
    staged_steps = sum(STAGES.values(), ())
    stages = {name: round(sum(step_s.get(s, 0.0) for s in steps), 2) for name, steps in STAGES.items()}
    stages["checks"] = round(sum(t for s, t in step_s.items() if s not in staged_steps), 2)
    spans = {name: [(r.started, r.ended) for r in outcome.steps if r.step in steps] for name, steps in STAGES.items()}
    spans["checks"] = [(r.started, r.ended) for r in outcome.steps if r.step not in staged_steps]
    peak_mb = {name: sampler.peak_mb(spans[name]) for name in spans}
    with RssSampler() as export_sampler:
        started = time.perf_counter()
        stages["export"] = _export_seconds(settings, work)
        peak_mb["export"] = export_sampler.peak_mb([(started, time.perf_counter())])
    from identity.resolve import last_run_stats

    con = connect(settings.db_path, read_only=True)
    try:
        identity_stats = last_run_stats(con)
        # Within the link-and-cluster step: linking (graph and Splink) and clustering (components, ids, writes)
        stages["link"] = round(identity_stats["graph_seconds"] + identity_stats["model_seconds"], 2)
        stages["cluster"] = round(identity_stats["cluster_seconds"] + identity_stats["write_seconds"], 2)
        comparisons = comparisons_scored(con)
        rows_in, loaded, quarantined = con.execute(
            "SELECT sum(rows_in), sum(rows_loaded), sum(rows_quarantined) FROM ingest_batches"
        ).fetchall()[0]
        customers_found = con.execute("SELECT count(DISTINCT customer_id) FROM customer_source_records").fetchall()[0][
            0
        ]
        accuracy: dict[str, object] = {}
        try:
            from identity.evaluate import evaluate

            metrics = evaluate(con, Path(str(inbox) + "-truth") / "records.csv")
            accuracy = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        except Exception as exc:  # the figure is reported as missing, the benchmark goes on
            accuracy = {"error": str(exc).splitlines()[0]}
    finally:
        con.close()
    return {
        "records": int(rows_in),
        "people": customers,
        "success": outcome.success,
        "failure": outcome.failure,
        "generate_s": round(generate_s, 2),
        "pipeline_s": round(outcome.seconds, 2),
        "load_s": round(load_s, 2),
        "stages_s": stages,
        "ingest_rows_per_s": round(int(rows_in) / stages["ingest"]) if stages["ingest"] else None,
        "pipeline_records_per_s": round(int(rows_in) / outcome.seconds),
        "rows_loaded": int(loaded),
        "rows_quarantined": int(quarantined),
        "customers": int(customers_found),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "stage_peak_rss_mb": peak_mb,
        "person_units": int(identity_stats.get("person_units", 0)),
        "comparisons_scored": comparisons,
        "identity": accuracy,
    }


def _export_seconds(settings, work: Path) -> float:  # type: ignore[no-untyped-def]
    """Seconds of one consented export of every customer for email marketing, as `cdp segments export`."""
    from cdp.store import connect
    from consent.export import export_segment

    con = connect(settings.db_path)
    try:
        started = time.perf_counter()
        export_segment(con, settings, "all_customers", "email_marketing", work / "all_customers-email.csv")
        return round(time.perf_counter() - started, 2)
    finally:
        con.close()


def comparisons_scored(con) -> int:  # type: ignore[no-untyped-def]
    """Pairs of person units the prediction blocking rules hand to Splink (exact, deduplicated across rules),
    counted by Splink's blocking analysis on the units the run stored. The rules are counted without the
    crowd guard: the run's ``crowded_blocks`` is 0 on generated worlds, so the count is the same."""
    from identity import model

    model.build_person_units(con, reuse_units=True, units="identity_units")
    loaded, _meta = model.load_model()
    session = model.open_session(con, model.base_settings() | {"comparisons": loaded["comparisons"]})
    try:
        counts = session.linker.blocking_analysis.count_comparisons_from_blocking_rules(record_sample_proportion=1.0)
        return int(counts[-1]["cumulative_comparison_count"]) if counts else 0
    finally:
        session.close()


def in_fresh_process(module_args: list[str], label: str) -> dict:
    """Run ``python -m <module_args>`` in a process of its own (its peak memory is its own) and return the
    JSON its last line prints; exit with the last error line when it fails, or with the pipeline's failure
    when the JSON says the run did not succeed."""
    out = subprocess.run([sys.executable, "-m", *module_args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"bench: {label} failed: {out.stderr.strip().splitlines()[-1]}")
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {json.dumps(result)}", flush=True)
    if result.get("success") is False:  # the pipeline ran and failed: its seconds time a run that did not happen
        sys.exit(f"bench: {label} failed: {result.get('failure')}")
    return result


def machine() -> dict:
    mem_kb = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def to_markdown(results: list[dict], host: dict) -> str:
    lines = [
        f"Machine: {host['cpus']} cores, {host['memory_gb']} GB, Python {host['python']}.",
        "",
        "| records | pipeline s | code loading s | ingest s | standardise s | link s | cluster s | profiles s "
        "| consent s | checks s | export s | comparisons scored | records/s | ingest rows/s | peak MB | precision "
        "| recall (connectable pairs) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["stages_s"]
        ident = r.get("identity", {})
        p = ident.get("precision")
        rc = ident.get("recall_connectable", ident.get("recall"))
        lines.append(
            f"| {r['records']:,} | {r['pipeline_s']} | {r.get('load_s')} | {s['ingest']} | {s['standardise']} "
            f"| {s['link']} | {s['cluster']} | {s['profiles']} | {s['consent']} | {s['checks']} | {s['export']} "
            f"| {r['comparisons_scored']:,} | {r['pipeline_records_per_s']:,} | {r['ingest_rows_per_s']:,} "
            f"| {r['peak_rss_mb']:,} "
            f"| {p if p is None else f'{p:.4f}'} | {rc if rc is None else f'{rc:.4f}'} |"
        )
    lines += [
        "",
        "Pipeline seconds are those of the Dagster run; code loading is the import of the pipeline's code "
        "location (Dagster, Great Expectations, the assets), paid once by a fresh process such as `cdp run`. "
        "Records/s: source records through the whole run; ingest rows/s: through the ingest steps.",
        "",
        "Peak resident memory per stage (MB), sampled every 10 ms during the stage's steps. DuckDB's buffers "
        "live in the process and are kept between steps, so a stage's peak includes what earlier stages left "
        "cached; the last column is the peak of the whole process.",
        "",
        "| records | ingest | standardise | link and cluster | profiles | consent | checks | export | process |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = ("ingest", "standardise", "link_and_cluster", "profiles", "consent", "checks", "export")
    for r in results:
        peaks = r.get("stage_peak_rss_mb", {})
        cells = " | ".join("-" if peaks.get(n) is None else f"{peaks[n]:,}" for n in names)
        lines.append(f"| {r['records']:,} | {cells} | {r['peak_rss_mb']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="*", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.seed)))
        return
    results = []
    for records in args.records:
        print(f"bench: {records:,} records ...", flush=True)
        results.append(
            in_fresh_process(["bench.run", "--one", str(records), "--seed", str(args.seed)], f"{records:,} records")
        )
    host = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps({"machine": host, "results": results}, indent=2) + "\n")
    (RESULTS / "pipeline.md").write_text(to_markdown(results, host))
    print((RESULTS / "pipeline.md").read_text())


if __name__ == "__main__":
    main()
