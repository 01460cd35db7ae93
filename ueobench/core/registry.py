"""A small name -> object registry with "did you mean" errors, shared by methods and scores."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UeobenchError

T = TypeVar("T")


def suggest(name: str, choices: list[str]) -> str:
    """Return "; did you mean 'x'?" for the closest choice, or a list of the valid choices."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; choose from: {', '.join(sorted(choices))}" if choices else ""


class Registry(Generic[T]):
    """Names to objects. Registering a different object under a taken name is an error.

    ``loader`` (optional) is called before every lookup and must be idempotent: it loads what is not loaded yet
    (plugins found since the last lookup), so the registry fills lazily, on first use."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._loader = loader
        self._loading = False

    def _ensure_loaded(self) -> None:
        if self._loader is not None and not self._loading:
            self._loading = True  # plugins register (and may look up) while loading
            try:
                self._loader()
            finally:
                self._loading = False

    def register(self, name: str, obj: T, origin: str = "") -> T:
        if name in self._items:
            existing = self._items[name]
            same = existing is obj or (
                getattr(existing, "__qualname__", None) == getattr(obj, "__qualname__", object())
                and self._origins[name] == origin
            )
            if not same:
                raise UeobenchError(
                    f"duplicate {self.kind} name '{name}': defined in {self._origins[name]} and in {origin}; "
                    f"rename one of them"
                )
        self._items[name] = obj
        self._origins[name] = origin
        return obj

    def get(self, name: str) -> T:
        self._ensure_loaded()
        try:
            return self._items[name]
        except KeyError:
            raise UeobenchError(f"unknown {self.kind} '{name}'{suggest(name, list(self._items))}") from None

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origins[name]

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def snapshot(self) -> tuple[dict[str, T], dict[str, str]]:
        """The registered items, for ``restore`` (tests keep plugins from leaking into each other)."""
        return dict(self._items), dict(self._origins)

    def restore(self, state: tuple[dict[str, T], dict[str, str]]) -> None:
        self._items, self._origins = dict(state[0]), dict(state[1])
