"""Hydra's own conformance suites for launchers (hydra-core's `hydra.test_utils.launcher_common_tests`), run against
ours the way Hydra's plugins run them (hydra_plugins/hydra_submitit_launcher/tests): `LauncherTestSuite`,
`BatchedSweeperTestSuite` and `IntegrationTestSuite`, each on `local`, `local_parallel`, `submitit_local` and, on the
local SLURM cluster, `slurm_local`.

Hydra's test apps are not dpo_sweeps: their configs do not include ours, so they reach our launchers' yaml through
`hydra.searchpath=[file://<repo>/conf]`. The fixtures (`hydra_sweep_runner`, `hydra_restore_singletons`) come from
hydra-core's pytest plugin (its pytest11 entry point). The jobs of the process-based launchers (and the integration
suite's apps) import this checkout's packages through PYTHONPATH.
"""

from __future__ import annotations

import os

import pytest
from helpers import REPO
from hydra import version
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from hydra.version import VersionBase

SEARCHPATH = f"hydra.searchpath=[file://{REPO / 'conf'}]"
# launcher name -> what it needs beyond its yaml in an app that is not ours.
LAUNCHERS = {
    "local": [],
    "local_parallel": [],
    "submitit_local": ["hydra.launcher.timeout_min=5"],
    "slurm_local": ["hydra.launcher.timeout_min=15"],
}
SLURM = [pytest.mark.slurm, pytest.mark.slow]


def _params(names: list[str], make) -> list:
    return [pytest.param(*make(name), id=name, marks=SLURM if name.startswith("slurm") else ()) for name in names]


@pytest.fixture(autouse=True)
def _this_checkout_in_jobs(request, monkeypatch):
    """Processes the suites start (submitit's jobs, SLURM jobs, the integration apps) import this checkout's
    dpo_sweeps and hydra_plugins, not whatever an editable install points at. The SLURM cases get the local
    cluster (skipped where none runs, failed under CI=true)."""
    if request.node.get_closest_marker("slurm"):
        request.getfixturevalue("slurm_cluster")
    # The suites expect Hydra's defaults for an app that gives no version_base, as in Hydra's own test runs (the 1.1
    # compatibility defaults: hydra.job.chdir=true); importing dpo_sweeps.cli (@hydra.main(version_base="1.3")) set 1.3
    # for this whole process.
    base = VersionBase.instance().getbase()
    VersionBase.instance().setbase(version.__compat_version__)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    yield
    VersionBase.instance().setbase(base)


@pytest.mark.parametrize(
    ("launcher_name", "overrides"), _params(list(LAUNCHERS), lambda n: (n, [SEARCHPATH, *LAUNCHERS[n]]))
)
class TestOurLaunchers(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    ("launcher_name", "overrides"),
    _params(list(LAUNCHERS), lambda n: (n, [SEARCHPATH, *LAUNCHERS[n], "hydra.sweeper.max_batch_size=2"])),
)
class TestOurLaunchersBatched(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize(
    ("task_launcher_cfg", "extra_flags"),
    _params(list(LAUNCHERS), lambda n: ({}, ["-m", f"hydra/launcher={n}", SEARCHPATH, *LAUNCHERS[n]])),
)
class TestOurLaunchersIntegration(IntegrationTestSuite):
    pass


def test_our_sweeper_refuses_an_app_that_is_not_dpo_sweeps_in_one_line(tmp_path):
    """Hydra's own test app with hydra/sweeper=dpo_optuna (reached through the search path like our launchers)."""
    import subprocess
    import sys

    app = tmp_path / "my_app.py"
    app.write_text(
        "import hydra\n\n\n@hydra.main(version_base='1.3', config_path=None)\n"
        "def main(cfg):\n    print('trained')\n\n\nif __name__ == '__main__':\n    main()\n"
    )
    proc = subprocess.run(
        [sys.executable, str(app), "-m", SEARCHPATH, "hydra/sweeper=dpo_optuna", "+x=interval(0,1)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 1 and "trained" not in proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "Error: hydra/sweeper=dpo_optuna searches dpo_sweeps' DPO runs only; this app (my_app, config None) has no "
        "objective, training, eval. Use Hydra's basic sweeper or hydra-optuna-sweeper for it."
    ], proc.stderr
