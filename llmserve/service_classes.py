"""Service classes: named priority tiers with latency targets and a share of capacity.

A class's rank is its position in the list, best first, and is the integer `priority` a request
carries through the engine (0 = most important, as in vLLM). Targets scale with the model and the
hardware, so they are settings: a TOML or YAML file, or `--service-class` flags, replace them.
Plain Python, no torch: the scheduler and the HTTP server both read it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmserve.units import parse_duration_s

_NO_TARGET = ("", "none", "null", "off")


@dataclass(frozen=True)
class ServiceClass:
    name: str
    ttft_target: float | None = None  # seconds from arrival to the first token
    e2e_target: float | None = None  # seconds from arrival to the last token
    share: float = 0.1  # of the token budget and of the running slots, when every class has work
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or self.name.strip() != self.name or self.name.isdigit():
            raise ValueError(f"a service class needs a name that is not a number, got {self.name!r}")
        if not 0 < self.share <= 1:
            raise ValueError(f"class {self.name}: share must lie in (0, 1], got {self.share!r}")
        for label, target in (("ttft", self.ttft_target), ("e2e", self.e2e_target)):
            if target is not None and target <= 0:
                raise ValueError(f"class {self.name}: the {label} target must be positive, got {target!r}")


@dataclass(frozen=True)
class ServiceClasses:
    classes: tuple[ServiceClass, ...]  # best first; the index is the rank
    default: str  # the class of a request that names none

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("at least one service class is needed")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"service class names must be unique, got {names}")
        if self.default not in names:
            raise ValueError(f"the default service class {self.default!r} is not one of {', '.join(names)}")

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, rank: int) -> ServiceClass:
        return self.classes[rank]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def default_rank(self) -> int:
        return self.names.index(self.default)

    def rank(self, value: int | str | None) -> int:
        """The rank a request asks for: None is the default, else a rank (0..n-1) or a class name."""
        if value is None:
            return self.default_rank
        if isinstance(value, str):
            text = value.strip()
            if text in self.names:
                return self.names.index(text)
            if not text.lstrip("-").isdigit():
                raise ValueError(f"unknown service class {value!r}; choose from {', '.join(self.names)} "
                                 f"or 0-{len(self) - 1}")
            value = int(text)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(self):
            raise ValueError(f"priority must be a class name ({', '.join(self.names)}) or an integer "
                             f"0-{len(self) - 1}, got {value!r}")
        return value

    def guaranteed_fraction(self, rank: int, busy: Iterable[int]) -> float:
        """The part of capacity `rank` is owed when the classes in `busy` (and it) all have work."""
        ranks = set(busy) | {rank}
        return self.classes[rank].share / sum(self.classes[r].share for r in ranks)

    # --- building ------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ServiceClasses:
        """{'default': 'p3', 'classes': [{'name': 'p0', 'ttft': '200ms', 'e2e': '1s', 'share': 0.4}, ...]}"""
        unknown = set(data) - {"default", "classes"}
        if unknown:
            raise ValueError(f"unknown service-class settings: {', '.join(sorted(unknown))}")
        items = data.get("classes")
        if not isinstance(items, list) or not items:
            raise ValueError("the service-class settings need a non-empty 'classes' list")
        classes = tuple(_class_from_mapping(item) for item in items)
        default = data.get("default", classes[-1].name)
        return cls(classes, str(default))

    @classmethod
    def from_file(cls, path: str | Path) -> ServiceClasses:
        path = Path(path)
        text = path.read_text()
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ValueError(f"service classes are read from .toml, .yaml or .yml files, not {path.name!r}")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a table with 'classes'")
        try:
            return cls.from_mapping(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def with_spec(self, spec: str) -> ServiceClasses:
        """'p0:ttft=150ms,e2e=1s,share=0.5' edits class p0; a new name is added as the lowest class."""
        name, sep, settings = spec.partition(":")
        name = name.strip()
        fields: dict[str, Any] = {"name": name}
        for item in filter(None, (part.strip() for part in settings.split(","))):
            key, has_value, value = item.partition("=")
            if not has_value:
                raise ValueError(f"a service class is like p0:ttft=200ms,e2e=1s,share=0.4; got {spec!r}")
            fields[key.strip()] = value.strip()
        if not sep or len(fields) == 1:
            raise ValueError(f"a service class is like p0:ttft=200ms,e2e=1s,share=0.4; got {spec!r}")
        if name in self.names:
            current = self.classes[self.names.index(name)]
            edited = _class_from_mapping(fields, base=current)
            classes = tuple(edited if c.name == name else c for c in self.classes)
        else:
            classes = (*self.classes, _class_from_mapping(fields))
        return ServiceClasses(classes, self.default)

    def with_default(self, name: str) -> ServiceClasses:
        return ServiceClasses(self.classes, name)


def _class_from_mapping(item: Any, base: ServiceClass | None = None) -> ServiceClass:
    if not isinstance(item, Mapping) or "name" not in item:
        raise ValueError(f"each service class needs a name, got {item!r}")
    unknown = set(item) - {"name", "ttft", "e2e", "share", "description"}
    if unknown:
        raise ValueError(f"class {item['name']}: unknown settings {', '.join(sorted(unknown))} "
                         "(known: ttft, e2e, share, description)")
    current = base or ServiceClass(str(item["name"]))
    changes: dict[str, Any] = {}
    if "ttft" in item:
        changes["ttft_target"] = _target(item["ttft"])
    if "e2e" in item:
        changes["e2e_target"] = _target(item["e2e"])
    if "share" in item:
        changes["share"] = _share(item["share"])
    if "description" in item:
        changes["description"] = str(item["description"])
    return replace(current, name=str(item["name"]), **changes)


def _target(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in _NO_TARGET):
        return None
    return parse_duration_s(value)


def _share(value: Any) -> float:
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"a share is like 0.4 or 40%, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"a share is like 0.4 or 40%, got {value!r}")
    return float(value)


# Common practice for mixed enterprise traffic. Requests that name no class go to p3, so a server
# whose clients never set a priority keeps plain arrival order and is never shed by a target.
DEFAULT_SERVICE_CLASSES = ServiceClasses(
    classes=(
        ServiceClass("p0", 0.2, 1.0, 0.4, "interactive, critical (payments)"),
        ServiceClass("p1", 0.5, 3.0, 0.3, "interactive (recommendations)"),
        ServiceClass("p2", 1.0, 10.0, 0.2, "content generation"),
        ServiceClass("p3", None, None, 0.1, "batch / background"),
    ),
    default="p3",
)
