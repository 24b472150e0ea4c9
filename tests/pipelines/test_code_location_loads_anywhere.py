"""The code location loads in a process whose main module has no file: Dagster's run workers are such
processes (spawned for runs launched from the UI, a schedule or the inbox sensor). With pyspark installed,
Great Expectations imports pyspark.sql.connect, which exits such a process with status 0 ("Skipping
doctests") unless the Spark Connect client's packages are present (pyspark[connect] in pyproject.toml)."""

import subprocess
import sys


def test_a_process_without_a_main_file_loads_the_code_location():
    code = "from pipelines.definitions import defs; print('loaded', len(defs.resolve_all_job_defs()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("loaded"), out.stderr.strip().splitlines()[-1:]
