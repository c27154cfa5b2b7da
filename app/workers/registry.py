"""The registry of job kinds: each module in this package that defines ``KIND`` adds one."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .context import JobContext

JobFunction = Callable[[JobContext, list[Path], Any], Any]


class KindError(ValueError):
    """Raised when a job kind module is missing or malformed."""


@dataclass(frozen=True)
class JobKind:
    """A job kind: a module-level function in a worker module and the pydantic model of its parameters."""

    name: str
    function: JobFunction
    params: type[BaseModel]
    description: str
    min_inputs: int = 1
    max_inputs: int | None = 1

    @property
    def module(self) -> str:
        return self.function.__module__

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "inputs": {"min": self.min_inputs, "max": self.max_inputs},
            "params": self.params.model_json_schema(),
        }


def load_kind(module_name: str) -> JobKind:
    """Import ``module_name`` and return its ``KIND``; workers call this to find a job's function."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise KindError(f"cannot import job kind module {module_name!r}: {error}") from error

    kind = getattr(module, "KIND", None)
    if not isinstance(kind, JobKind):
        raise KindError(f"module {module_name!r} defines no KIND = JobKind(...)")
    if kind.function.__module__ != module_name:
        raise KindError(f"KIND.function of {module_name!r} must be defined in that module, so spawn can import it")
    return kind


def builtin_modules() -> list[str]:
    package = __name__.rpartition(".")[0]
    path = importlib.import_module(package).__path__
    skip = {"context", "registry", "runner"}
    return [f"{package}.{info.name}" for info in pkgutil.iter_modules(path) if info.name not in skip]


def discover_kinds(extra_modules: Iterable[str] = ()) -> dict[str, JobKind]:
    """Import the built-in kind modules and ``extra_modules``; return the kinds by name."""
    kinds: dict[str, JobKind] = {}
    for module_name in [*builtin_modules(), *extra_modules]:
        kind = load_kind(module_name)
        if kind.name in kinds:
            raise KindError(f"job kind {kind.name!r} is defined twice, in {kinds[kind.name].module} "
                            f"and {module_name}")
        kinds[kind.name] = kind
    return dict(sorted(kinds.items()))
