"""Name -> object registries for the creator's plug-in points, and loading of user plug-in files.

Every swappable piece of the creator (informativeness metric, prompt sampler, evolver, child filter,
reward) is looked up by name in one of the module-level registries below. Users add their own by
decorating a function or class in a Python file and passing that file with ``--eva.plugin path.py``;
``load_plugin`` imports the file so its decorators run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that is not in a registry. Subclasses both KeyError and ValueError so either catch works."""

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes; show it as written.
        return str(self.args[0])


class PluginError(RuntimeError):
    """A user plug-in file that is missing or fails to import."""


class Registry:
    """A named mapping from names to objects, filled with the ``register`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._objects: dict[str, Any] = {}

    def register(self, name: str, *, override: bool = False) -> Callable[[T], T]:
        """Decorator that stores the decorated object under ``name``.

        Registering a taken name raises unless ``override=True``, so two plug-ins cannot silently
        shadow each other (or a built-in).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def decorator(obj: T) -> T:
            if name in self._objects and not override:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered; pass override=True to replace it"
                )
            self._objects[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> Any:
        """Return the object registered as ``name``; an unknown name lists the available ones."""
        if name not in self._objects:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._objects)) or '(none)'}"
            )
        return self._objects[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._objects)

    def __contains__(self, name: object) -> bool:
        return name in self._objects


METRICS = Registry("metric")
SAMPLERS = Registry("sampler")
EVOLVERS = Registry("evolver")
FILTERS = Registry("filter")
REWARDS = Registry("reward")
ALL_REGISTRIES = (METRICS, SAMPLERS, EVOLVERS, FILTERS, REWARDS)

register_metric = METRICS.register
register_sampler = SAMPLERS.register
register_evolver = EVOLVERS.register
register_filter = FILTERS.register
register_reward = REWARDS.register

# Loaded plug-ins by absolute path: loading a file twice (for example once for its metric and once
# as a task evolver) returns the first module instead of re-running its decorators.
_loaded_plugins: dict[str, ModuleType] = {}


def load_plugin(path: str | os.PathLike) -> ModuleType:
    """Import the Python file at ``path`` so the ``register_*`` decorators inside it run.

    Returns the module. A missing file, or any exception raised while importing it, becomes a single
    ``PluginError`` that names the file and the original exception (chained as ``__cause__``).
    """
    abs_path = os.path.abspath(os.fspath(path))
    if abs_path in _loaded_plugins:
        return _loaded_plugins[abs_path]
    if not os.path.isfile(abs_path):
        raise PluginError(f"eva plug-in file {abs_path} does not exist")

    # A unique module name per path keeps two plug-ins with the same file name apart.
    digest = hashlib.sha1(abs_path.encode()).hexdigest()[:12]
    module_name = f"eva_plugin_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, abs_path)
    if spec is None or spec.loader is None:
        raise PluginError(f"eva plug-in file {abs_path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # Undo the registrations of a file that fails half-way, so a fixed file can be loaded again.
    registries = (METRICS, SAMPLERS, EVOLVERS, FILTERS, REWARDS)
    snapshots = [dict(registry._objects) for registry in registries]
    try:
        spec.loader.exec_module(module)
    except BaseException as error:
        sys.modules.pop(module_name, None)
        for registry, snapshot in zip(registries, snapshots):
            registry._objects = snapshot
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        raise PluginError(
            f"eva plug-in file {abs_path} failed to import: {type(error).__name__}: {error}"
        ) from error
    _loaded_plugins[abs_path] = module
    return module
