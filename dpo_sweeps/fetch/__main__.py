"""python -m dpo_sweeps.fetch <the sweep's overrides> [--cache-dir DIR]

Downloads every model (with its tokenizer) and dataset the sweep's points need into the Hugging Face cache (or DIR),
so that compute nodes without internet run the sweep offline. Run it on a login node with internet, with the same
overrides as the sweep (`-m` may stay). Prints what it fetched and its size; writes nothing but the cache.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from dpo_sweeps.fetch.check import cached_folder
from dpo_sweeps.fetch.needs import HubItem, needs

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Files a training run never loads: original checkpoints (Llama's original/*.pth is as big as the model again), other
# frameworks' weights and exports. PyTorch .bin weights stay: some models ship nothing else.
MODEL_IGNORE = [
    "original/*",
    "*.pth",
    "*.gguf",
    "onnx/*",
    "*.onnx",
    "*.msgpack",
    "*.h5",
    "*.tflite",
    "*.ot",
    "*.mlmodel",
]


def points(overrides: list[str]) -> list:
    """Every point of the sweep, composed the way Hydra's basic sweeper composes them (a search: its base config)."""
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from dpo_sweeps.config import (
        naming,  # noqa: F401  (the folder-name resolvers the config refers to)
        typos,
    )
    from dpo_sweeps.config.schema import register_schemas
    from dpo_sweeps.paths import register_path_resolvers

    register_schemas()
    register_path_resolvers()
    typos.install()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides, run_mode=RunMode.MULTIRUN)
        if not str(master.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return [master]
        params = master.hydra.sweeper.get("params") or {}
        arguments = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.to_container(master.hydra.overrides.task))
        parser = OverridesParser.create(config_loader=loader)
        batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
        return [loader.load_sweep_config(master, list(point)) for batch in batches for point in batch]


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())  # stat follows the cache's symlinks


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def fetch(item: HubItem, cache_dir: str | None) -> Path:
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            item.repo_id,
            repo_type=item.kind,
            revision=item.revision,
            cache_dir=cache_dir,
            ignore_patterns=MODEL_IGNORE if item.kind == "model" else None,
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(__doc__.strip())
        return 0
    cache_dir = None
    if "--cache-dir" in args:
        at = args.index("--cache-dir")
        if at + 1 >= len(args):
            print("Error: --cache-dir needs a folder.", file=sys.stderr)
            return 1
        cache_dir = args[at + 1]
        del args[at : at + 2]
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    from hydra.errors import HydraException

    try:
        composed = points(overrides)
    except HydraException as err:
        print(str(err) if str(err).startswith("Error") else f"Error: {err}", file=sys.stderr)
        return 1
    items = sorted({item for cfg in composed for item in needs(cfg)})
    if not items:
        print(f"{len(composed)} point(s): nothing to fetch (tiny, bundled or local models and data only).")
        return 0
    total, failed = 0, []
    for item in items:
        folder = cached_folder(item, cache_dir)
        state = "cached "
        if folder is None:
            tic = time.perf_counter()
            try:
                folder = fetch(item, cache_dir)
            except Exception as exc:  # unreachable, not found, gated: one line each, then exit 1
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                failed.append(f"  - {item}: {type(exc).__name__}: {first}")
                continue
            state = f"fetched in {time.perf_counter() - tic:.1f} s"
        size = size_of(folder)
        total += size
        print(f"{item}: {state}, {human(size)} in {folder}", flush=True)
    if failed:
        print(f"Error: {len(failed)} of {len(items)} could not be fetched:\n" + "\n".join(failed), file=sys.stderr)
        return 1
    print(
        f"{len(items)} model(s)/dataset(s) for {len(composed)} point(s), {human(total)} in all: ready to run offline."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
