"""The pipeline's deployment on the Prefect server, with a cron schedule.

    python -m flows deploy [--cron "0 2 * * *"]   # create/update the deployment
    python -m flows deploy --serve                # create it and serve it: scheduled runs execute here

A served deployment runs in this process (Prefect's `serve`), so no work pool or worker is needed.
"""
from __future__ import annotations

from flows.pipeline import pipeline
from tasks.runtime import project_root

DEPLOYMENT_NAME = "nightly"
DEFAULT_CRON = "0 2 * * *"  # 02:00 every day


def build(cron: str = DEFAULT_CRON, timezone: str = "UTC"):
    from prefect.schedules import Cron

    return pipeline.to_deployment(
        name=DEPLOYMENT_NAME,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"root": str(project_root())},
        description="The whole kdprune pipeline; stages DVC finds up to date are skipped.",
        tags=["kdprune"],
    )


def deploy(cron: str | None = None, timezone: str = "UTC", serve: bool = False) -> None:
    dep = build(cron or DEFAULT_CRON, timezone)
    if serve:
        from prefect import serve as prefect_serve

        prefect_serve(dep)
    else:
        dep_id = dep.apply()
        print(f"deployment 'pipeline/{DEPLOYMENT_NAME}' ({dep_id}) with cron {cron or DEFAULT_CRON!r} {timezone}; "
              "serve it with `make serve` (python -m flows deploy --serve)")
