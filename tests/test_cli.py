"""The entrypoint stays light: --help, --cfg job and composing a sweep never import the training stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, run_cli

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "bitsandbytes", "wandb")

PROBE = """
import sys
sys.argv = ["dpo_sweeps", *{args!r}]
from dpo_sweeps.cli import main
try:
    main()
except SystemExit:
    pass
print("HEAVY_IMPORTED=" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--cfg", "job", "model=gemma_2b", "lora=r16", "quantization=nf4"],
        ["--cfg", "hydra", "model=qwen1_5b", "beta=0.3"],
    ],
    ids=["help", "cfg-job", "cfg-hydra"],
)
def test_light_paths_import_no_training_stack(args):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("HEAVY_IMPORTED=")][-1]
    assert line == "HEAVY_IMPORTED=", f"{args} imported {line.split('=', 1)[1]}"


def test_help_lists_groups_and_options():
    out = run_cli(["--help"]).stdout
    for expected in ("model:", "tiny_qwen", "qwen1_5b", "lora:", "r64_all_linear", "quantization:", "nf4", "beta"):
        assert expected in out


def test_cfg_job_prints_the_composed_config():
    out = run_cli(["--cfg", "job", "model=gemma_2b", "lora=r16", "quantization=nf4"]).stdout
    assert "name_or_path: google/gemma-2b-it" in out
    assert "mode: nf4" in out
    assert "attn_implementation: eager" in out


def test_console_script_is_the_same_entrypoint():
    exe = REPO / ".venv" / "bin" / "dpo-sweeps"
    script = exe if exe.exists() else "dpo-sweeps"
    proc = subprocess.run([str(script), "--cfg", "job", "model=qwen1_5b"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "Qwen/Qwen2.5-1.5B-Instruct" in proc.stdout
