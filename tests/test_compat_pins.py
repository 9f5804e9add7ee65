"""Every private internal of a library we keep is checked at import, naming the installed and the tested versions:
Hydra's (sweep/hydra_compat.py), submitit's job side (slurm/submitit_compat.py), Optuna's FrozenTrial._trial_id
(search/compat.py); and torch>=2.6 where FSDP2 (`fully_shard`) is used."""

from __future__ import annotations

import importlib
import tomllib
from importlib import metadata

import pytest

from dpo_sweeps.slurm import submitit_compat
from dpo_sweeps.sweep import hydra_compat
from tests.helpers import REPO

DEPENDENCIES = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def test_the_installed_hydra_has_every_internal_and_is_the_pinned_one():
    assert hydra_compat.problems() == []
    assert f"hydra-core{hydra_compat.TESTED_RANGE}" in DEPENDENCIES
    assert metadata.version("hydra-core") in hydra_compat.TESTED_VERSIONS.split(", ")


@pytest.mark.parametrize(
    ("module", "name", "named"),
    [
        ("hydra._internal.core_plugins.basic_sweeper", "BasicSweeper.split_arguments", "BasicSweeper.split_arguments"),
        (
            "hydra._internal.config_loader_impl",
            "ConfigLoaderImpl._apply_overrides_to_config",
            "ConfigLoaderImpl._apply_overrides_to_config",
        ),
    ],
)
def test_a_changed_hydra_internal_is_named_with_both_versions(monkeypatch, module, name, named):
    cls_name, attr = name.split(".")
    monkeypatch.delattr(getattr(importlib.import_module(module), cls_name), attr)
    assert [p for p in hydra_compat.problems() if named in p]
    with pytest.raises(hydra_compat.HydraChangedError) as err:
        hydra_compat.check()
    message = str(err.value)
    assert f"installed hydra-core {metadata.version('hydra-core')}" in message and named in message
    assert f"Tested with hydra-core {hydra_compat.TESTED_VERSIONS}" in message
    assert f"pip install 'hydra-core{hydra_compat.TESTED_RANGE}'" in message


def test_the_submitit_internals_a_job_calls_on_preemption_are_checked(monkeypatch):
    from submitit.core import job_environment

    monkeypatch.delattr(job_environment.JobEnvironment, "_usr_sig")
    assert submitit_compat.problems() == ["JobEnvironment._usr_sig() (the preemption signal)"]
    monkeypatch.undo()
    monkeypatch.delattr(job_environment.SignalHandler, "checkpoint_and_try_requeue")
    (problem,) = submitit_compat.problems()
    assert "SignalHandler.checkpoint_and_try_requeue" in problem
    with pytest.raises(
        submitit_compat.SubmititChangedError, match=f"Tested with submitit {submitit_compat.TESTED_VERSIONS}"
    ):
        submitit_compat.check()


def test_an_optuna_without_frozen_trial_ids_is_refused_naming_the_versions(monkeypatch):
    pytest.importorskip("optuna")
    from optuna.trial import FrozenTrial

    from dpo_sweeps.search import compat

    def init(self, *args, **kwargs):  # an Optuna whose FrozenTrial keeps its id under another name
        self.number = 0

    monkeypatch.setattr(FrozenTrial, "__init__", init)
    with pytest.raises(compat.OptunaVersionError, match=r"FrozenTrial no longer sets `_trial_id`.*optuna>=5,<6"):
        compat._check()


def test_torch_is_pinned_where_fsdp2_exists():
    # FSDP2's fully_shard (training.fsdp.version=2, the default) is public from torch 2.6 on.
    (torch_pin,) = [d for d in DEPENDENCIES if d.startswith("torch")]
    assert torch_pin == "torch>=2.6", torch_pin


def test_hydras_override_dirname_function_is_checked(monkeypatch):
    from hydra._internal import config_loader_impl

    monkeypatch.delattr(config_loader_impl, "get_overrides_dirname")
    assert hydra_compat.problems() == [
        "config_loader_impl.get_overrides_dirname(overrides, exclude_keys, item_sep, kv_sep)"
    ]
