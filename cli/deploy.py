"""Deployments on the Prefect server, with cron schedules: the pipeline, or a sweep of a profile.

    python -m flows deploy [--cron "0 2 * * *"]            # pipeline/nightly: the pipeline on params.yaml
    python -m flows deploy --profile fashion_mnist \
        [-S student.kd_weights=[0.3,0.9]] [--cron ...]     # sweep/fashion_mnist: that profile's sweep
    python -m flows deploy --serve [...]                   # create it and serve it: scheduled runs execute here
    python -m flows deploy --paused                        # `make setup`: register it paused, once (visible in
                                                           # the Prefect UI); `make serve` resumes and serves it

A served deployment runs in this process (Prefect's `serve`), so no work pool or worker is needed.
"""
from __future__ import annotations

from flows.pipeline import pipeline
from flows.sweep import sweep
from servers.runtime import project_root

DEPLOYMENT_NAME = "nightly"
DEFAULT_CRON = "0 2 * * *"  # 02:00 every day


def build(cron: str = DEFAULT_CRON, timezone: str = "UTC", profile: str | None = None, overrides=(),
          paused: bool | None = None):
    from prefect.schedules import Cron

    if profile:
        return sweep.to_deployment(
            name=profile,
            schedules=[Cron(cron, timezone=timezone)],
            parameters={"root": str(project_root()), "profile": profile, "overrides": list(overrides)},
            description=f"The sweep of profiles/{profile}.yaml {' '.join(overrides)}: params.yaml is written "
                        "from it, then its stale stages run.",
            tags=["kdprune", "sweep"],
            paused=paused,
        )
    return pipeline.to_deployment(
        name=DEPLOYMENT_NAME,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"root": str(project_root())},
        description="The whole kdprune pipeline; stages DVC finds up to date are skipped.",
        tags=["kdprune"],
        paused=paused,
    )


def existing(name: str):
    """The deployment called ``flow/deployment`` on the server, or None."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def deploy(cron: str | None = None, timezone: str = "UTC", serve: bool = False, profile: str | None = None,
           overrides=(), paused: bool = False) -> None:
    """Create (or update) the deployment, or serve it. ``paused``: create it with its schedule paused,
    and leave one that exists as it is (`make setup` runs this every time: it must not pause a
    deployment the user has resumed, nor reset its schedule)."""
    name = f"sweep/{profile}" if profile else f"pipeline/{DEPLOYMENT_NAME}"
    if paused and (dep := existing(name)) is not None:
        print(f"deployment '{name}' is registered ({'paused' if dep.paused else 'active'}); "
              "`make serve` resumes it and runs its schedule while it serves")
        return
    dep = build(cron or DEFAULT_CRON, timezone, profile, overrides, paused=paused or None)
    if serve:
        from prefect import serve as prefect_serve

        prefect_serve(dep)
    else:
        dep_id = dep.apply()
        print(f"deployment '{name}' ({dep_id}) with cron {cron or DEFAULT_CRON!r} {timezone}"
              + (", paused; `make serve` resumes it and runs its schedule while it serves" if paused
               else "; serve it with `make serve` (or `kdprune serve`, same options)"))
