"""Every option of every group composes and validates; bad configs fail before any model is built, naming the key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dpo_sweeps.cli import CONF_DIR
from dpo_sweeps.config.validation import ConfigError, find_problems, validate
from tests.helpers import compose_config, run_cli

GROUPS = ("model", "dataset", "lora", "quantization", "loss", "training", "logger")
# What an option needs from the rest of the config to be valid on its own.
NEEDS = {
    ("dataset", "local"): ["dataset.path=/data/prefs.jsonl"],
    ("model", "llama3_1_8b_4bit"): ["quantization=none"],
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


ALL_OPTIONS = [(g, o) for g in GROUPS for o in _options(g)]


def test_every_group_has_options():
    for group in GROUPS:
        assert _options(group), f"conf/{group}/ has no options"
    assert {"none", "r16", "r64_all_linear"} <= set(_options("lora"))
    assert {"none", "nf4", "int8"} <= set(_options("quantization"))
    assert {"llama3_2_1b", "llama3_1_8b", "qwen1_5b", "llama3_1_8b_4bit", "gemma_2b"} <= set(_options("model"))
    assert {"tiny_llama", "tiny_qwen", "tiny_gemma"} <= set(_options("model"))


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}", *NEEDS.get((group, option), [])])
    assert find_problems(cfg) == []
    # Fully resolvable: no dangling interpolation anywhere.
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes_and_validates(preset):
    # With Hydra's node: the launcher decides how many ranks a point has (FSDP needs several).
    cfg = compose_config([f"experiment={preset}"], return_hydra_config=True)
    local = cfg.dataset.name == "local"
    if local:
        cfg = compose_config([f"experiment={preset}", "dataset.path=/data/prefs.jsonl"], return_hydra_config=True)
    assert find_problems(cfg) == []


def test_options_in_file_comments_start_with_the_command():
    # House style (torchtune): every config file starts with the command that uses it.
    for path in CONF_DIR.rglob("*.yaml"):
        first = path.read_text().splitlines()[0]
        second = path.read_text().splitlines()[1] if first.startswith("# @package") else first
        assert "python -m dpo_sweeps" in second or "make " in second, f"{path} does not start with its command"


def test_seed_models_keep_their_quirks():
    llama = compose_config(["model=llama3_2_1b"]).model
    gemma = compose_config(["model=gemma_2b"]).model
    assert llama.pad_token == "<|finetune_right_pad_id|>"
    assert gemma.attn_implementation == "eager" and gemma.merge_system_into_user
    assert compose_config(["model=llama3_1_8b_4bit"]).model.prequantized


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["beta=0"], "beta=0"),
        (["beta=-0.5"], "beta=-0.5"),
        (["quantization=nf4", "lora=none"], "quantization=nf4 with lora=none"),
        (["lora.r=0"], "lora.r=0"),
        (["model=llama3_1_8b_4bit", "quantization=nf4"], "quantization=nf4 with model.prequantized=true"),
        (["model=llama3_1_8b_4bit", "lora=none", "quantization=none"], "lora=none with a pre-quantized model"),
        (["loss=robust", "loss.label_smoothing=0.7"], "loss.label_smoothing=0.7"),
        (["training.padding_free=true"], "training.padding_free=true"),
        (["dataset=local"], "dataset.path"),
        (["dataset=toy", "dataset.columns.chosen=better"], "dataset.columns.* with dataset=toy"),
        (["training.use_liger_kernel=true", "training.use_cpu=false"], "ref_cache.enabled=false"),
    ],
)
def test_bad_values_are_named(overrides, named):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(overrides))
    assert named in str(err.value)


def test_all_violations_are_reported_at_once():
    cfg = compose_config(["beta=0", "quantization=nf4", "lora=none", "training.learning_rate=-1"])
    problems = find_problems(cfg)
    assert len(problems) == 3
    assert any(p.startswith("beta=0") for p in problems)
    assert any(p.startswith("quantization=nf4") for p in problems)
    assert any(p.startswith("training.learning_rate=-1") for p in problems)


def test_misspelled_key_and_unknown_option_fail_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="lora.rank"):
        compose_config(["lora.rank=8"])
    with pytest.raises(ConfigCompositionException, match="tiny_qwn"):
        compose_config(["model=tiny_qwn"])
    with pytest.raises(ConfigCompositionException, match="beta"):
        compose_config(["beta=high"])


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["model=tiny_qwn"], "Could not find 'model/tiny_qwn'"),
        (["lora.rank=8"], "lora.rank"),
        (["beta=0"], "DPO's beta must be > 0"),
        (["quantization=nf4", "lora=none"], "quantization=nf4 with lora=none"),
    ],
)
def test_cli_refuses_bad_config_before_building_a_model(tmp_path, args, named):
    run_dir = tmp_path / "run"
    proc = run_cli(["model=tiny_qwen", "dataset=toy", "logger=none", *args, f"hydra.run.dir={run_dir}"], check=False)
    assert proc.returncode != 0
    assert named in proc.stderr + proc.stdout
    # Nothing was trained or saved: no resolved config, no metrics, no adapter.
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "adapter").exists()


@pytest.mark.parametrize(
    ("override", "named", "nearest"),
    [
        ("+lora.rr=4", "lora.rr=4", "lora.r"),
        ("+training.lerning_rate=1e-5", "training.lerning_rate", "training.learning_rate"),
        ("+dataset.columns.promt=q", "dataset.columns.promt=q", "dataset.columns.prompt"),
    ],
)
def test_a_key_added_with_plus_to_a_typed_group_is_refused_naming_the_nearest_key(override, named, nearest):
    # Hydra applies `+key=value` with the struct flag off, so the dataclass schema alone lets these through.
    cfg = compose_config(["model=tiny_qwen", "dataset=local", "dataset.path=/data/p.jsonl", override])
    problems = [p for p in find_problems(cfg) if named in p]
    assert len(problems) == 1, find_problems(cfg)
    assert f"did you mean {nearest}?" in problems[0]


def test_the_sweep_level_config_with_its_hydra_node_has_no_unknown_keys():
    assert find_problems(compose_config(["model=tiny_qwen", "dataset=toy"], return_hydra_config=True)) == []
