"""A misspelled key on the command line gets one message: the valid keys of its group and the closest match.

Two paths lead here. `+lora.rank=8` is added unchecked by Hydra and caught by `validation._check_unknown_keys`;
`lora.rank=8` is refused by Hydra itself while composing, with the advice "To append to your config use
+lora.rank=8", which is wrong for a typed group (the schema refuses the added key one step later). `install` wraps
Hydra's override step so that this case gets our message instead; every other composition error passes unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import re

from omegaconf import DictConfig, OmegaConf


def known_keys(node) -> list[str] | None:
    """The keys a config node may hold: its dataclass schema's fields, or None for a free-form dict."""
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if schema is None or not dataclasses.is_dataclass(schema):
        return None
    return [f.name for f in dataclasses.fields(schema)]


def closest(key: str, known: list[str]) -> str | None:
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if near:
        return near[0]
    # `rank` for `r`: difflib's ratio misses a name that extends a short one.
    prefixed = [k for k in known if key.startswith(k)]
    return prefixed[0] if len(prefixed) == 1 else None


def unknown_key_message(full_key: str, value, known: list[str], added: bool) -> str:
    """One line: the key and value, the closest valid key, every valid key, the fix."""
    prefix, _, key = full_key.rpartition(".")
    prefix = f"{prefix}." if prefix else ""
    near = closest(key, known)
    hint = f"did you mean {prefix}{near}? " if near else ""
    how = (
        "`+` adds a key unchecked, and this group's schema has no such key"
        if added
        else "adding it with `+` would not help: this group's schema has no such key"
    )
    return (
        f"{full_key}={value}: unknown key, {hint}valid keys of {prefix.rstrip('.') or 'the top level'}: "
        f"{', '.join(known)} ({how}). Fix: correct the name, or drop the override."
    )


_REFUSED = re.compile(r"Could not override '([^']+)'")


def _explain(overrides, cfg: DictConfig, message: str) -> str | None:
    match = _REFUSED.search(message)
    if not match:
        return None
    full_key = match.group(1)
    override = next((o for o in overrides if o.key_or_group == full_key), None)
    parts = full_key.split(".")
    node = cfg
    # Walk down as far as the keys exist: the first missing one is the typo (`lorra.r=8` names `lorra`).
    for depth, part in enumerate(parts):
        known = known_keys(node)
        if known is None:
            return None
        if part not in known:
            shown = ".".join(parts[: depth + 1])
            value = override.value() if override is not None and depth == len(parts) - 1 else "..."
            return "Error: " + unknown_key_message(shown, value, known, added=False)
        node = node._get_node(part)
    return None


def install() -> None:
    """Wrap Hydra's override step (once per process): a key missing from a typed group gets `unknown_key_message`."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    original = ConfigLoaderImpl._apply_overrides_to_config
    if getattr(original, "dpo_sweeps_typos", False):
        return

    def apply_overrides(overrides, cfg):
        try:
            original(overrides, cfg)
        except ConfigCompositionException as err:
            if not isinstance(err.__cause__, ConfigAttributeError | ConfigKeyError):
                raise
            explained = _explain(overrides, cfg, str(err))
            if explained is None:
                raise
            # `from None`: Hydra prints an OmegaConf cause under the message (five lines of reference_type=...).
            raise ConfigCompositionException(explained) from None

    apply_overrides.dpo_sweeps_typos = True
    ConfigLoaderImpl._apply_overrides_to_config = staticmethod(apply_overrides)
