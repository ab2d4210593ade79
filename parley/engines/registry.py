"""Engines are found through the `parley.engines` entry-point group, their options (their command-line flags)
through `parley.engine_options`.

parley's own engines are declared there in pyproject.toml, exactly as a third-party package
would declare its own; tests can add engines to a registry instance directly (an engine class's
`options_model`, if it has one, gives its options then).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from parley.engines.base import Engine, EngineOptions
from parley.errors import ParleyError
from parley.models.source import ModelSource

ENTRY_POINT_GROUP = "parley.engines"
OPTIONS_GROUP = "parley.engine_options"
# The extra that installs each built-in engine's dependencies (parley[local] for the others).
EXTRA_OF_ENGINE = {"llamacpp": "llamacpp", "sentence-transformers": "embeddings"}


class EngineRegistry:
    def __init__(self, engines: dict[str, type[Engine]] | None = None):
        self._engines: dict[str, type[Engine]] = dict(engines or {})
        self._entry_points: dict[str, EntryPoint] = {}  # loaded on first use
        self._options: dict[str, EntryPoint] = {}

    @classmethod
    def from_entry_points(cls) -> EngineRegistry:
        registry = cls()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            registry._entry_points.setdefault(ep.name, ep)
        for ep in entry_points(group=OPTIONS_GROUP):
            registry._options.setdefault(ep.name, ep)
        return registry

    def options_model(self, name: str) -> type[EngineOptions]:
        """The engine's options, without importing the engine when it declares them as an entry point."""
        if name in self._options:
            return self._options[name].load()
        if name in self._engines or name in self._entry_points:
            return getattr(self.get(name), "options_model", EngineOptions)
        return EngineOptions

    def register(self, name: str, engine_cls: type[Engine]) -> None:
        self._engines[name] = engine_cls

    def names(self) -> list[str]:
        return sorted(set(self._engines) | set(self._entry_points))

    def get(self, name: str) -> type[Engine]:
        if name not in self._engines and name in self._entry_points:
            try:
                self._engines[name] = self._entry_points[name].load()
            except ModuleNotFoundError as exc:  # e.g. a gateway host installed without parley[local]
                extra = EXTRA_OF_ENGINE.get(name, "local")
                raise ParleyError(f"the {name} engine needs {exc.name}, which is not installed here; install "
                                  f"parley[{extra}] (or the package {exc.name})") from None
        try:
            return self._engines[name]
        except KeyError:
            raise ParleyError(f"unknown engine {name!r}; available: {', '.join(self.names())}") from None

    def create(self, name: str, source: ModelSource | None, options: EngineOptions) -> Engine:
        engine = self.get(name).create(source, options)
        engine.reasoning_parser = options.reasoning_parser
        if options.chat_template is not None:
            engine.chat_template_text = Path(options.chat_template).read_text(encoding="utf-8")
        return engine
