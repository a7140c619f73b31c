"""prefect.yaml deploys against a real temporary Prefect server, schedules and limits as documented."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _prefect(*args: str) -> str:
    prefect = str(Path(sys.executable).with_name("prefect"))
    done = subprocess.run([prefect, "--no-prompt", *args], cwd=ROOT, env=os.environ.copy(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_deployment_of_prefect_yaml_deploys(prefect_server):
    import yaml
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    _prefect("work-pool", "create", "clothret", "--type", "process")
    _prefect("deploy", "--all")
    declared = {d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}

    async def read():
        async with get_client() as client:
            return await client.read_deployments()

    deployments = {d.name: d for d in run_coro_as_sync(read())}
    assert declared <= set(deployments)
    nightly = deployments["nightly-refresh"]
    assert nightly.work_pool_name == "clothret" and nightly.entrypoint == "flows/catalogue_refresh.py:catalogue_refresh"
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.global_concurrency_limit is not None and nightly.global_concurrency_limit.limit == 1
    assert nightly.parameters["config"]["segment_size"] == 5000
    backfill = deployments["backfill"]
    assert backfill.parameters["config"]["bundle_url"].endswith("next/bundle.yaml")
    assert backfill.parameters["config"]["store_url"] == nightly.parameters["config"]["store_url"]
    # promote and rollback install the serving build's models where the nightly refresh reads its bundle
    for name in ("promote", "rollback"):
        assert deployments[name].parameters["serving_bundle_url"] == nightly.parameters["config"]["bundle_url"]
