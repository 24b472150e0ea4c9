"""The Dagster code location of the CDP: ``make dev`` shows it, ``cdp run`` materialises it.

Assets are loaded from the modules of :mod:`pipelines.assets` (ingest, identity, profiles), their checks
with them. Steps run in one process: DuckDB lets one process write a database file at a time, and the
instance's run queue (dagster.yaml) lets one run at a time.
"""

from __future__ import annotations

import dagster as dg

from pipelines import assets as asset_package
from pipelines.assets.profiles import activation_job, activation_schedule
from pipelines.resources import default_resources
from pipelines.sensors import PIPELINE_JOB, inbox_sensor

#: Group of assets that send data out of the platform; they run on their own schedule, not in a rebuild.
ACTIVATION_GROUP = "activation"

all_assets = dg.load_assets_from_package_module(asset_package)
all_checks = dg.load_asset_checks_from_package_module(asset_package)

pipeline_job = dg.define_asset_job(
    name=PIPELINE_JOB,
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups(ACTIVATION_GROUP),
    description="Ingest the inbox, validate, resolve identities, build profiles and consent state.",
)


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=all_assets,
        asset_checks=all_checks,
        jobs=[pipeline_job, activation_job],
        schedules=[activation_schedule],
        sensors=[inbox_sensor],
        resources=resources or default_resources(),
        executor=dg.in_process_executor,
    )


defs = build_definitions()
