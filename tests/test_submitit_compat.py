"""The private submitit internals our launcher uses: pinned in pyproject, and checked at the launcher's import so that
a submitit that changed them fails at once, naming the installed and the tested versions."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata

import pytest

from dpo_sweeps.slurm import submitit_compat
from tests.helpers import REPO, TINY

# Removes one internal the launcher uses, as a submitit release that renamed it would.
BREAK = "import submitit.core.utils as u; del u.JobPaths.move_temporary_file\n"


def test_the_installed_submitit_has_every_internal_and_is_the_pinned_one():
    assert submitit_compat.problems() == []
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"submitit{submitit_compat.TESTED_RANGE}" in dependencies
    assert metadata.version("submitit") in submitit_compat.TESTED_VERSIONS.split(", ")


def test_a_missing_internal_is_named_with_both_versions(monkeypatch):
    from submitit.core import utils

    monkeypatch.delattr(utils.DelayedSubmission, "set_timeout")
    assert submitit_compat.problems() == ["DelayedSubmission.set_timeout(self, timeout_min, max_num_timeout)"]
    with pytest.raises(submitit_compat.SubmititChangedError) as err:
        submitit_compat.check()
    message = str(err.value)
    assert f"installed submitit {metadata.version('submitit')}" in message
    assert f"Tested with submitit {submitit_compat.TESTED_VERSIONS}" in message
    assert f"pip install 'submitit{submitit_compat.TESTED_RANGE}'" in message


def test_importing_the_launcher_fails_at_once_and_a_sweep_stops_before_anything_runs(tmp_path):
    imported = subprocess.run(
        [sys.executable, "-c", BREAK + "import dpo_sweeps.slurm.launcher"], cwd=REPO, capture_output=True, text=True
    )
    assert imported.returncode == 1
    assert "SubmititChangedError: dpo_sweeps' SLURM launcher cannot work with the installed submitit" in imported.stderr
    assert "JobPaths.move_temporary_file(self, tmp_path, name)" in imported.stderr

    argv = ["dpo_sweeps", "-m", "model=tiny_qwen", *TINY, "hydra/launcher=slurm_local", f"hydra.sweep.dir={tmp_path}"]
    swept = subprocess.run(
        [sys.executable, "-c", BREAK + f"import sys; sys.argv = {argv!r}\nfrom dpo_sweeps.cli import main; main()"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = swept.stdout + swept.stderr
    assert swept.returncode == 1, out[-3000:]
    assert "Error: dpo_sweeps' SLURM launcher cannot work with the installed submitit" in out
    assert "Nothing was submitted." in out and "Traceback" not in out
    assert not list(tmp_path.rglob("*.pkl"))
