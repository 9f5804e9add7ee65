import os

import pytest

# The `slurm_cluster` fixture (skips without a cluster, fails under CI=true).
pytest_plugins = ["tests.slurm_support"]

# Keep the suite's threads modest on 2-core CI machines and its logs readable.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_paths():
    """The three tiny models, built once per machine (deterministic) into the dpo_sweeps cache."""
    from dpo_sweeps.models.tiny import ARCHS, ensure

    return {arch: ensure(arch) for arch in ARCHS}
