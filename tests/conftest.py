import fcntl
import os

import pytest

# The `slurm_cluster` fixture (skips without a cluster, fails under CI=true); how tests run side by side under xdist
# (locks for the cluster and the machine, threads per worker, order; it caps the threads as it is imported, before
# any test module imports torch).
pytest_plugins = ["tests.slurm_support", "tests.parallel"]

# Keep the suite's threads modest on 2-core CI machines and its logs readable.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def tiny_model_paths():
    """The three tiny models, built once per machine (deterministic) into the dpo_sweeps cache, before any test: the
    CLI runs of many tests load them without asking for this fixture. One xdist worker builds them while the others
    wait (an flock beside them), instead of every worker building the same models at once."""
    from dpo_sweeps.models.tiny import ARCHS, ensure
    from dpo_sweeps.paths import cache_dir

    lock_path = cache_dir() / "tiny_models" / ".build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return {arch: ensure(arch) for arch in ARCHS}
