"""Deployments on the Prefect server, with cron schedules: the pipeline, or a sweep of a profile.

    python -m flows deploy [--cron "0 2 * * *"]            # pipeline/nightly: the pipeline on params.yaml
    python -m flows deploy --profile fashion_mnist \
        [-S student.kd_weights=[0.3,0.9]] [--cron ...]     # sweep/fashion_mnist: that profile's sweep
    python -m flows deploy --serve [...]                   # create it and serve it: scheduled runs execute here

A served deployment runs in this process (Prefect's `serve`), so no work pool or worker is needed.
"""
from __future__ import annotations

from flows.pipeline import pipeline
from flows.sweep import sweep
from tasks.runtime import project_root

DEPLOYMENT_NAME = "nightly"
DEFAULT_CRON = "0 2 * * *"  # 02:00 every day


def build(cron: str = DEFAULT_CRON, timezone: str = "UTC", profile: str | None = None, overrides=()):
    from prefect.schedules import Cron

    if profile:
        return sweep.to_deployment(
            name=profile,
            schedules=[Cron(cron, timezone=timezone)],
            parameters={"root": str(project_root()), "profile": profile, "overrides": list(overrides)},
            description=f"The sweep of profiles/{profile}.yaml {' '.join(overrides)}: params.yaml is written "
                        "from it, then its stale stages run.",
            tags=["kdprune", "sweep"],
        )
    return pipeline.to_deployment(
        name=DEPLOYMENT_NAME,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"root": str(project_root())},
        description="The whole kdprune pipeline; stages DVC finds up to date are skipped.",
        tags=["kdprune"],
    )


def deploy(cron: str | None = None, timezone: str = "UTC", serve: bool = False, profile: str | None = None,
           overrides=()) -> None:
    dep = build(cron or DEFAULT_CRON, timezone, profile, overrides)
    name = f"sweep/{profile}" if profile else f"pipeline/{DEPLOYMENT_NAME}"
    if serve:
        from prefect import serve as prefect_serve

        prefect_serve(dep)
    else:
        dep_id = dep.apply()
        print(f"deployment '{name}' ({dep_id}) with cron {cron or DEFAULT_CRON!r} {timezone}; "
              "serve it with `python -m flows deploy --serve` (same options)")
