"""Where a data set's classes come from: density maps, atomic models and built-in synthetic
macromolecules, mixed in one list (``--templates synthetic:512 --templates maps/``).

Why mixed: a model trained on the 8 training classes of 20 maps learns those classes, not what
makes two particles the same complex (issue 34). Synthetic classes are unlimited and cheap, so a
training set can hold hundreds of them beside the few real maps. Every entry is read before
anything is simulated, so a bad one fails first, and one class name names one map: a name found in
two sources is refused unless both files hold the same bytes (then the second copy is dropped).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from fewshot_cryoet.core.errors import FscError, SettingError
from fewshot_cryoet.datasets.templates import Template, find_template_files, load_template

#: The entry that stands for built-in synthetic classes: ``synthetic:N``.
SYNTHETIC_PREFIX = "synthetic:"
#: Bumped when the synthetic generator changes what a seed draws (cache keys include it).
SYNTHETIC_VERSION = "synthetic-v1"


@dataclass(frozen=True)
class ClassSources:
    """The resolved entries, in the order given: template files and, where ``synthetic:N`` was
    listed, that many synthetic classes (seeds ``synthetic_seed`` onwards)."""

    entries: tuple[Path | int, ...]
    synthetic_seed: int = 0

    @property
    def files(self) -> list[Path]:
        return [e for e in self.entries if isinstance(e, Path)]

    @property
    def synthetic(self) -> int:
        return sum(e for e in self.entries if isinstance(e, int))

    def __len__(self) -> int:
        return len(self.files) + self.synthetic

    def key(self) -> str:
        """A digest of everything that defines the classes: each file's name and bytes, and the
        synthetic count, first seed and generator version."""
        digest = hashlib.sha256()
        for entry in self.entries:
            if isinstance(entry, int):
                digest.update(f"{SYNTHETIC_VERSION}:{self.synthetic_seed}:{entry}".encode())
            else:
                digest.update(entry.name.encode())
                digest.update(hashlib.sha256(entry.read_bytes()).digest())
        return digest.hexdigest()[:16]

    def load(self, voxel_size: float, template_voxel_size: float | None = None, resolution: float | None = None,
             advance: Callable[[], None] = lambda: None) -> list[Template]:
        """Every class as a template on the ``voxel_size`` grid, in the order of the entries."""
        from fewshot_cryoet.datasets.synthetic import synthetic_template

        templates: list[Template] = []
        for entry in self.entries:
            if isinstance(entry, Path):
                templates.append(load_template(entry, voxel_size, template_voxel_size, resolution))
                advance()
                continue
            for seed in range(self.synthetic_seed, self.synthetic_seed + entry):
                templates.append(synthetic_template(seed, voxel_size, resolution))
                advance()
        return templates


def class_sources(entries: Sequence[str | Path], synthetic_seed: int = 0) -> ClassSources:
    """Resolve ``entries`` (files, folders of them, and at most one ``synthetic:N``) and check
    that no class name comes from two different maps; the one-line errors name the entries."""
    from fewshot_cryoet.datasets.build import MAX_CLASSES
    from fewshot_cryoet.datasets.synthetic import synthetic_name

    resolved: list[Path | int] = []
    for entry in entries:
        text = str(entry)
        if not text.startswith(SYNTHETIC_PREFIX) or Path(text).exists():
            resolved.extend(find_template_files([entry]))
            continue
        count = text[len(SYNTHETIC_PREFIX):]
        if not count.isdigit() or not 1 <= int(count) <= MAX_CLASSES:
            raise SettingError("templates", f"templates entry {text!r}: write synthetic:N with N from 1 to "
                                            f"{MAX_CLASSES:,} (the number of built-in synthetic classes)")
        if any(isinstance(e, int) for e in resolved):
            raise SettingError("templates", f"templates: synthetic:N is given twice ({text!r}); give one count")
        resolved.append(int(count))
    seen: dict[str, Path | str] = {}
    kept: list[Path | int] = []
    for entry in resolved:
        if isinstance(entry, int):
            for seed in range(synthetic_seed, synthetic_seed + entry):
                _claim(seen, synthetic_name(seed), f"{SYNTHETIC_PREFIX}{entry}")
            kept.append(entry)
        elif _claim(seen, entry.stem, entry):
            kept.append(entry)
    return ClassSources(tuple(kept), synthetic_seed)


def _claim(seen: dict[str, Path | str], name: str, source: Path | str) -> bool:
    """Record that ``source`` provides class ``name``: True if it is new, False if the same map
    was already given (a copy); a different map under a taken name is refused."""
    first = seen.setdefault(name, source)
    if first is source:
        return True
    if isinstance(first, Path) and isinstance(source, Path) and _same_bytes(first, source):
        return False
    raise FscError(f"templates: class {name} comes from two different maps, {first} and {source}; "
                   "a class name must name one map (rename one file or leave one source out)")


def _same_bytes(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes())
