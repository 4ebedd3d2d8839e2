"""A small name -> factory registry (timm style) shared by backbones and heads."""
from __future__ import annotations

from typing import Any, Callable, Dict, Generic, List, TypeVar

from insightface_adadistill.errors import close_matches

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a factory; `register` is a decorator keyed by the function name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: Dict[str, Callable[..., T]] = {}
        self._specs: Dict[str, Any] = {}

    def register(self, fn: Callable[..., T] | None = None, *, spec: Any = None):
        """Register `fn` under `fn.__name__`; usable as `@reg.register` or `@reg.register(spec=...)`."""

        def add(factory: Callable[..., T]) -> Callable[..., T]:
            name = factory.__name__
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            self._specs[name] = spec
            return factory

        return add(fn) if fn is not None else add

    def names(self) -> List[str]:
        return sorted(self._factories)

    def spec(self, name: str) -> Any:
        self._check(name)
        return self._specs[name]

    def create(self, name: str, **kwargs: Any) -> T:
        """Build `name`; `None` kwargs are dropped so callers can pass optional settings through."""
        self._check(name)
        return self._factories[name](**{k: v for k, v in kwargs.items() if v is not None})

    def _check(self, name: str) -> None:
        if name not in self._factories:
            close = close_matches(name, self.names(), n=1)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}")

    def __contains__(self, name: object) -> bool:
        return name in self._factories
