"""The pre-launch composition of sweep points is Hydra's: same config as `load_sweep_config`, same errors."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dpo_sweeps.cli import CONF_DIR
from dpo_sweeps.sweep.preflight import _PointComposer

POINTS = [
    ["model=tiny_qwen", "beta=0.2", "lora=none", "training.learning_rate=1e-4"],
    ["model=tiny_qwen", "beta=0.3", "lora=r16", "loss=ipo", "training.max_steps=7"],
    [
        "model=tiny_llama",
        "beta=0.3",
        "lora=r16",
        "dataset=local",
        "dataset.path=/d/x.jsonl",
        "dataset.columns.prompt=q",
    ],
    ["model=tiny_qwen", "beta=0.2", "lora=none", "seed=3"],  # reuses the first point's composition
]


@pytest.fixture()
def loader_and_master():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        master = compose("config", overrides=["logger=none"], return_hydra_config=True)
        yield GlobalHydra.instance().config_loader(), master


def test_fast_composition_equals_hydras_own(loader_and_master):
    loader, master = loader_and_master
    composer = _PointComposer(master, loader)
    for point in POINTS:
        fast, full = composer(point), loader.load_sweep_config(master, point)
        job = lambda c: OmegaConf.to_container(c, resolve=False, throw_on_missing=False)  # noqa: E731
        fast_job, full_job = job(fast), job(full)
        fast_job.pop("hydra"), full_job.pop("hydra")
        assert fast_job == full_job, point
        assert list(fast.hydra.overrides.task) == point
    # Points that differ only in values share one composition.
    assert len(composer.bases) == 3


@pytest.mark.parametrize(
    ("point", "message"),
    [(["lora.rank=3"], "lora.rank"), (["beta=high"], "beta"), (["model=tiny_qwn"], "tiny_qwn")],
)
def test_fast_composition_raises_like_hydra(loader_and_master, point, message):
    loader, master = loader_and_master
    with pytest.raises(ConfigCompositionException, match=message):
        loader.load_sweep_config(master, point)
    with pytest.raises(ConfigCompositionException, match=message):
        _PointComposer(master, loader)(point)
