"""Site limits on the local cluster with accounting (`slurm/site.py`): a per-user submit limit counts only where the
sweep's jobs run, i.e. the QOS they run under and the association they are charged to."""

from __future__ import annotations

import os

import pytest

from dpo_sweeps.slurm import site
from tests.helpers import TINY, run_cli
from tests.slurm_support import slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slurm


def test_a_strict_qos_refuses_only_the_sweeps_that_run_under_it(slurm_cluster, tmp_path):  # noqa: F811
    unused, used = f"strict_unused_{os.getpid()}", f"strict_used_{os.getpid()}"
    slurm_cluster.run("sacctmgr", "-i", "add", "qos", unused, "MaxSubmitJobsPerUser=1")
    slurm_cluster.run("sacctmgr", "-i", "add", "qos", used, "MaxSubmitJobsPerUser=1")
    try:
        # Without hydra.launcher.qos the jobs run under the association's default QOS (normal here): neither counts.
        default = site.read_limits()
        assert default.accounting
        assert not [src for _, src in default.user_submit_limits if "strict_" in src], default.user_submit_limits
        assert (1, f"MaxSubmitJobsPerUser of QOS {used} (the launcher's qos)") in site.read_limits(
            qos=used
        ).user_submit_limits

        sweep = ["-m", "model=tiny_qwen", *TINY, "hydra/launcher=slurm_local", "beta=0.1,0.2,0.3"]
        dry = run_cli([*sweep, "dry_run=true", f"hydra.sweep.dir={tmp_path / 'dry'}"], timeout=300)
        assert "REFUSED" not in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]
        assert "SLURM: 3 point(s) to submit in 1 array job(s)" in dry.stdout + dry.stderr

        refused = run_cli(
            [*sweep, f"hydra.launcher.qos={used}", f"hydra.sweep.dir={tmp_path / 'refused'}"], timeout=300, check=False
        )
        out = refused.stdout + refused.stderr
        assert refused.returncode == 1, out[-3000:]
        assert f"MaxSubmitJobsPerUser of QOS {used} (the launcher's qos)=1" in out and "Nothing was submitted" in out
        assert "Traceback" not in out
        assert not list((tmp_path / "refused").rglob("*_submitted.pkl")), "nothing may be submitted"
    finally:
        slurm_cluster.run("sacctmgr", "-i", "delete", "qos", f"{unused},{used}", check=False)
