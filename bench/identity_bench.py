"""Identity resolution benchmark: accuracy, id stability, and time/peak memory from 100k to 1M records.

Run: ``.venv/bin/python bench/identity_bench.py`` (or ``make bench``). Writes ``bench/results/identity.json``
and ``bench/results/identity.md``. Worlds are generated under ``bench/work/`` (ignored by git).

Sections (``--only`` picks some): ``accuracy`` (2,000-person omnichannel world: precision/recall, recall
over connectable units; no_shared_ids world: F1), ``stability`` (rerun on unchanged input; then a new
batch), ``scale`` (records 100k..1M: seconds and peak RSS of resolve_identities), ``blocking`` (pair
recall and comparison counts of each prediction blocking rule on the no_shared_ids world).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"


def build_store(inbox: Path, db: Path, fresh: bool = True) -> dict[str, int]:
    """Ingest ``inbox`` and build the staged tables into ``db`` (no Dagster: the same functions it calls)."""
    from cdp.ingest import Ingestor
    from cdp.store import connect
    from identity.staging import build_staging

    if fresh:
        for suffix in ("", ".wal"):
            Path(str(db) + suffix).unlink(missing_ok=True)
    con = connect(db)
    try:
        Ingestor(con, b"bench-secret-not-for-production", "GB").ingest_inbox(inbox)
        return build_staging(con, "GB")
    finally:
        con.close()


def world(name: str, customers: int, seed: int, mode: str = "omnichannel") -> tuple[Path, Path]:
    """Generate (once) ``bench/work/<name>`` and return (inbox, truth records.csv)."""
    from cdp.generate import generate_world

    inbox = WORK / name
    truth = Path(str(inbox) + "-truth") / "records.csv"
    if not truth.exists():
        generate_world(inbox, customers=customers, seed=seed, mode=mode)
    return inbox, truth
