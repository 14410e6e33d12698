"""Named registries of plugin-provided things (methods, data sets): one registry per concept.

Each entry remembers where it came from (``built-in`` or ``distribution version``), so listings
and every results row can say which code produced a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from fewshot_cryoet.core.errors import FscError

T = TypeVar("T")


@dataclass(frozen=True)
class Origin:
    """Where a registered thing comes from: the plugin's name and its distribution."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.distribution is None:
            return "built-in"
        return f"{self.distribution} {self.version or ''}".strip()


class Registry(Generic[T]):
    """Name → item, with the origin of each; duplicate names are refused with both origins."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._origins: dict[str, Origin] = {}

    def add(self, item: T, name: str | None = None, origin: Origin = Origin("built-in")) -> None:
        name = name or getattr(item, "name", None)
        if not name:
            raise FscError(f"{origin}: a {self.kind} needs a name")
        if name in self._items:
            raise FscError(f"{self.kind} {name!r} from {origin} clashes with the one from {self._origins[name]}")
        self._items[name] = item
        self._origins[name] = origin

    def get(self, name: str) -> T:
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise FscError(f"unknown {self.kind} {name!r}; available: {known}")
        return self._items[name]

    def origin(self, name: str) -> Origin:
        return self._origins[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """Names in the order they were added (built-ins first), for registries whose items are
        tried in turn."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def scoped(self, origin: Origin) -> _Scoped[T]:
        """The view a plugin's hook gets (see :class:`_Scoped`)."""
        return _Scoped(self, origin)


class _Scoped(Generic[T]):
    """What one plugin's hook sees: ``add`` records the plugin's origin; a name that is already
    taken is skipped and remembered in ``clashes`` (the plugin's other entries stay)."""

    def __init__(self, registry: Registry[T], origin: Origin) -> None:
        self.registry = registry
        self.origin = origin
        self.added: list[str] = []
        self.clashes: list[str] = []

    def add(self, item: T, name: str | None = None) -> None:
        name = name or getattr(item, "name", None)
        if name in self.registry:
            self.clashes.append(
                f"{self.registry.kind} {name!r} is already registered by {self.registry.origin(name)}"
            )
            return
        self.registry.add(item, name, self.origin)
        self.added.append(name)

    def rollback(self) -> None:
        """Forget everything this plugin added (its hook failed half-way)."""
        for name in self.added:
            self.registry._items.pop(name, None)
            self.registry._origins.pop(name, None)
        self.added.clear()
