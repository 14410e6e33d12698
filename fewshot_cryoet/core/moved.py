"""Old module paths, kept importable for one release with a ``DeprecationWarning``.

The package was flat until 0.1; its modules now live in subpackages named after the layers (see
DESIGN.md). Third-party plugins and users' scripts written against the old paths
(``from fewshot_cryoet.store import ResultsStore``) keep working: importing an old path gives the
very module object of the new one (so ``isinstance`` checks, monkeypatching and module state are
shared) and warns once, at the importing line, with the new path to use.

A finder on ``sys.meta_path`` rather than 27 stub files: the stubs would rebuild the flat top level
this move removed, and a stub re-exporting names would be a second module whose attributes drift
from the real one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: Old module → its new home. Removed in the release after next.
MOVED: dict[str, str] = {f"fewshot_cryoet.{old}": f"fewshot_cryoet.{new}" for old, new in {
    "errors": "core.errors", "outputs": "core.outputs", "redact": "core.redact", "reporting": "core.reporting",
    "params": "core.params", "databases": "core.databases", "local_workers": "core.local_workers",
    "hookspecs": "plugins.hookspecs", "registry": "plugins.registry",
    "checkpoints": "models.checkpoints", "training_state": "models.training_state", "model_dir": "models.model_dir",
    "scoring": "evaluation.scoring", "calibration": "evaluation.calibration", "metrics": "evaluation.metrics",
    "runner": "evaluation.runner",
    "store": "results.store", "store_schema": "results.schema", "store_location": "results.location",
    "results_archive": "results.archive",
    "leaderboard": "reports.leaderboard", "figures": "reports.figures",
    "predict": "inference.predict",
    "terminal": "cli.terminal", "cli_options": "cli.options", "cli_models": "cli.models", "cli_tune": "cli.tune",
}.items()}


def warn_moved(old: str, new: str) -> None:
    """One DeprecationWarning pointing at the user's line (import machinery frames skipped)."""
    warnings.warn(f"{old} has moved to {new}; import it from there (the old path goes in the release after next)",
                  DeprecationWarning, stacklevel=_callers_level())


def _callers_level() -> int:
    """The ``stacklevel`` of the first frame outside this module and importlib, counted as
    ``warnings`` counts: importlib's bootstrap frames are not counted at all."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename == __file__ or "importlib" in frame.f_code.co_filename
                                 or frame.f_code.co_name == "__getattr__"):  # a module's moved-name hook
        frame = frame.f_back
        if frame is not None and not ("importlib" in frame.f_code.co_filename
                                      and "_bootstrap" in frame.f_code.co_filename):
            level += 1
    return level


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the new module itself."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        warn_moved(spec.name, MOVED[spec.name])
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        """Nothing to run: the new module was executed when it was imported."""


#: Names that left a module that stays: module → {name: its new module}.
MOVED_NAMES: dict[str, dict[str, str]] = {
    "fewshot_cryoet.methods.base": {"TorchMethod": "fewshot_cryoet.methods.torch_method",
                                    "cpu_has_bf16": "fewshot_cryoet.methods.torch_method"},
}


def moved_name(module: str, name: str):
    """The ``__getattr__`` body of a module some of whose names moved: the name from its new module,
    with a DeprecationWarning; an AttributeError for anything else, as Python gives."""
    new = MOVED_NAMES.get(module, {}).get(name)
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warn_moved(f"{module}.{name}", f"{new}.{name}")
    return getattr(importlib.import_module(new), name)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), so a stale file of an old path never wins."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
