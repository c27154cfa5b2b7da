"""The registry of job kinds: each module in this package that defines ``KIND`` adds one.

A module may define several kinds as ``KINDS = [...]`` instead.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
    # Seconds a job of this kind may run unless the request sets timeout_s; None means the
    # server's --job-timeout-s.
    timeout_s: float | None = None
    # Parameters bounded by a server setting, as parameter name -> Settings field name. The server
    # fills an omitted one with the setting's value and rejects a larger one, so a job may lower a
    # limit but never raise it. Each such parameter must default to None; the server checks this.
    capped_params: Mapping[str, str] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return self.function.__module__

    def describe(self, caps: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Describe the kind for clients; ``caps`` are the server's values of its capped parameters."""
        return {
            "name": self.name,
            "description": self.description,
            "inputs": {"min": self.min_inputs, "max": self.max_inputs},
            "timeout_s": self.timeout_s,
            "params": self.params.model_json_schema(),
            "caps": dict(caps or {}),
        }


def describe_input_count(low: int, high: int | None) -> str:
    """Say how many input files a kind takes: ``1 input file``, ``2 to 5 input files``."""
    if high is None:
        return f"{low} or more input files"
    plural = "" if high == 1 else "s"
    return f"{low} input file{plural}" if low == high else f"{low} to {high} input files"


def load_kinds(module_name: str) -> list[JobKind]:
    """Import ``module_name`` and return the kinds it defines as ``KIND`` or ``KINDS``."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise KindError(f"cannot import job kind module {module_name!r}: {error}") from error

    kinds = list(getattr(module, "KINDS", []))
    if hasattr(module, "KIND"):
        kinds.append(module.KIND)
    if not kinds or not all(isinstance(kind, JobKind) for kind in kinds):
        raise KindError(f"module {module_name!r} defines no KIND = JobKind(...) or KINDS = [JobKind(...), ...]")
    for kind in kinds:
        if kind.function.__module__ != module_name:
            raise KindError(f"job kind {kind.name!r}: its function must be defined in {module_name!r} itself, "
                            "so that spawned workers can import it")
    return kinds


def find_kind(module_name: str, name: str) -> JobKind:
    """Return the kind called ``name`` from ``module_name``; workers call this to find a job's function."""
    for kind in load_kinds(module_name):
        if kind.name == name:
            return kind
    raise KindError(f"module {module_name!r} defines no job kind {name!r}")


def builtin_modules() -> list[str]:
    """Return the kind modules of this package: all but the job machinery and private helper modules."""
    package = __name__.rpartition(".")[0]
    path = importlib.import_module(package).__path__
    skip = {"context", "registry", "runner"}
    return [f"{package}.{info.name}" for info in pkgutil.iter_modules(path)
            if info.name not in skip and not info.name.startswith("_")]


def discover_kinds(extra_modules: Iterable[str] = ()) -> dict[str, JobKind]:
    """Import the built-in kind modules and ``extra_modules``; return the kinds by name."""
    kinds: dict[str, JobKind] = {}
    for module_name in [*builtin_modules(), *extra_modules]:
        for kind in load_kinds(module_name):
            if kind.name in kinds:
                raise KindError(f"job kind {kind.name!r} is defined twice, in {kinds[kind.name].module} "
                                f"and {module_name}")
            kinds[kind.name] = kind
    return dict(sorted(kinds.items()))
