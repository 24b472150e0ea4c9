"""``make bench`` (incremental part): a 1% batch on a base world, incremental vs full rebuild.

    python -m bench.incremental                      # 1M-record base, 1% batch
    python -m bench.incremental --records 100000     # a smaller base

A world is generated, and the newest rows of every source (``--fraction`` of the source's rows, taken
from its latest file) are held back as the new batch. The base is run through the pipeline; the batch is
then added and run incrementally; the same store is finally rebuilt in full (``--full-refresh``) to check
that the incremental run gave the same customers. Results go to ``bench/results/incremental.{json,md}``.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = ROOT / "work"
SOURCES = ("web", "app", "store", "crm", "consent")
