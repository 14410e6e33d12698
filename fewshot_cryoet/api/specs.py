"""Which methods a run uses: ``NAME[/VARIANT]`` entries validated against the plugin registry
into method specs (with tuned and ``--param`` hyper-parameters), the list of registered
methods, and trained methods loaded back from a model folder or checkpoint."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.tuning.storage import DEFAULT_STORAGE

if TYPE_CHECKING:

    from fewshot_cryoet.evaluation.grid import MethodSpec


# -- methods ---------------------------------------------------------------------------------------
def method_specs(methods: str | Sequence[str], params: dict[str, dict[str, Any]] | None = None,
                 tuned: Sequence[str] = (), storage: str = DEFAULT_STORAGE) -> list[MethodSpec]:
    """Methods to run, validated without building anything: ``"protonet,siamese/variant"`` or a
    list of ``NAME[/VARIANT]``; ``params`` maps a method name to hyper-parameter overrides; each
    ``tuned`` source (``best:STUDY`` in ``storage``, or a file from ``fsc tune export``) gives its
    method/variant the tuned values (explicit ``params`` still win)."""
    from fewshot_cryoet.evaluation.grid import MethodSpec
    from fewshot_cryoet.plugins import get_plugins, require_methods

    entries = [e.strip() for e in (methods.split(",") if isinstance(methods, str) else methods) if e.strip()]
    if not entries:
        raise SettingError("methods", "methods is empty; name at least one (see fsc methods)")
    names = [e.split("/", 1)[0] for e in entries]
    classes = require_methods(names)
    params = dict(params or {})
    strays = sorted(set(params) - set(names))
    if strays:
        raise SettingError("param", f"param for {', '.join(strays)}, which is not among the methods "
                                    f"({', '.join(names)})")
    plugins = get_plugins()
    specs = []
    for entry, name, cls in zip(entries, names, classes):
        variant, resolved = cls.resolve(params.get(name), entry.split("/", 1)[1] if "/" in entry else None)
        specs.append(MethodSpec(cls, variant, dict(params.get(name, {})), str(plugins.methods.origin(name)),
                                cls.display_label(variant, resolved)))
    for source in tuned:
        from fewshot_cryoet.tuning import resolve_params

        specs = apply_tuned(specs, resolve_params(source, storage))
    return specs


def apply_tuned(specs: list[MethodSpec], tuned) -> list[MethodSpec]:
    """Give the spec(s) of the tuned method/variant the tuned hyper-parameters (explicit values
    still win) and a label that says they were tuned, and with how many trials."""
    hits = [i for i, s in enumerate(specs) if s.cls.name == tuned.method and s.variant == tuned.variant]
    if not hits:
        raise SettingError("methods", f"{tuned.source}: tunes {tuned.method}/{tuned.variant}, which is not run; "
                                      f"add it with methods {tuned.method}/{tuned.variant}")
    specs = list(specs)
    for i in hits:
        spec = specs[i]
        merged = {**tuned.params, **spec.params}
        try:
            variant, resolved = spec.cls.resolve(merged, tuned.variant)
        except FscError as exc:
            raise FscError(f"{tuned.source}: {exc}") from None
        explicit = spec.cls.display_label(variant, spec.cls.resolve(spec.params, variant)[1])
        specs[i] = replace(spec, variant=variant, params=merged, label=f"{explicit} · tuned ({tuned.trials} trials)")
    return specs


def load_method(path: str | Path, device: str = "auto"):
    """A trained method from a model folder (``fsc train``) or a checkpoint file (``<store>.models``)."""
    from fewshot_cryoet.core.devices import resolve_device
    from fewshot_cryoet.models.checkpoints import load_method as from_checkpoint
    from fewshot_cryoet.models.model_dir import load_model

    path = Path(path)
    if path.is_dir():
        return load_model(path, resolve_device(device))[0]
    return from_checkpoint(path, resolve_device(device))


def specs_of(methods, params, tuned, storage) -> list[MethodSpec]:
    from fewshot_cryoet.evaluation.grid import MethodSpec

    if not isinstance(methods, str) and methods and all(isinstance(m, MethodSpec) for m in methods):
        return list(methods)
    return method_specs(methods, params, tuned, storage)


def parse_param_overrides(texts: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["protonet.lr=1e-3", "cosnet.channels=[8,16]"]`` → ``{"protonet": {"lr": 0.001}, ...}``;
    values are JSON where they parse as JSON, strings otherwise."""
    overrides: dict[str, dict[str, Any]] = {}
    for text in texts:
        match = re.fullmatch(r"([\w-]+)\.(\w+)=(.*)", text)
        if not match:
            raise SettingError("param", f"param {text!r}: use METHOD.KEY=VALUE")
        try:
            value = json.loads(match.group(3))
        except ValueError:
            value = match.group(3)
        overrides.setdefault(match.group(1), {})[match.group(2)] = value
    return overrides


def methods() -> pd.DataFrame:
    """Every registered method (built-in and plugins): variants, origin, whether it segments and trains."""
    from fewshot_cryoet.plugins import get_plugins

    registry = get_plugins().methods
    return pd.DataFrame([{"method": name, "variants": ", ".join(cls.variants), "origin": str(registry.origin(name)),
                          "segments": "yes" if cls.segments else "no", "trains": "yes" if cls.trainable else "no",
                          "description": cls.description}
                         for name in registry.names() for cls in [registry.get(name)]])


def check_row_method(row: dict[str, Any]) -> None:
    """Whether a results row from elsewhere (an archive) names a method installed here, with
    parameters that method accepts, and the parameter hash and label it gives them (a tuned row's
    label ends ``· tuned (N trials)``); a one-line :class:`FscError` otherwise. So a crafted row
    cannot pass for a method's under another name (``xcorr (FAKE)``)."""
    from fewshot_cryoet.plugins import get_plugins

    registry = get_plugins().methods
    if row["method"] not in registry:
        raise FscError(f"method {row['method']!r} is not installed here (install its plugin to load its results)")
    cls = registry.get(row["method"])
    try:
        variant, resolved = cls.resolve(json.loads(row["params"]), row["variant"])
    except FscError as exc:
        raise FscError(f"method {cls.name}: its parameters are refused ({exc})") from None
    except Exception as exc:  # a plugin's resolve may fail any way on parameters it never saw
        raise FscError(f"method {cls.name}: its parameters are refused ({type(exc).__name__})") from None
    if cls.hash_params(resolved) != row["params_hash"]:
        raise FscError(f"method {cls.name}: parameter hash {row['params_hash']} is not that of its parameters "
                       f"({cls.hash_params(resolved)})")
    label = cls.display_label(variant, resolved)
    tuned = re.fullmatch(r"(.+) · tuned \(\d+ trials\)", row["label"])
    if row["label"] != label and not (tuned and tuned.group(1).startswith(cls.label_for(variant, resolved))):
        raise FscError(f"method {cls.name}: label {row['label']!r} is not the one it gives these parameters ({label!r})")
