"""What a rule says about itself, without running: documentation and thresholds.

A rule's thresholds are a frozen :class:`RuleOptions` record (a ``msgspec.Struct``, declared next
to the rule's code, read by it as attributes); each field is declared with its :class:`Option`
(unit, accepted range, meaning, default, type), which the config loader, ``--set`` and
``mlprof explain`` use through the rule catalogue.

Kept free of pandas and numpy so that ``mlprof rules``, ``mlprof explain`` and the
config loader can read it (through :mod:`mlprof.rules.catalogue`) without importing
the analysis stack; :mod:`mlprof.rules.base` re-exports these names for the rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import msgspec
from msgspec.structs import replace


class RuleDoc(msgspec.Struct, frozen=True):
    """Linter-style documentation, printed by ``mlprof explain ID``."""

    what: str
    why: str
    detection: str
    fix: str
    """Prose plus a short code example (indented four spaces)."""
    false_alarms: str


class Option(msgspec.Struct, frozen=True):
    """One threshold of a rule: what ``[tool.mlprof.rules.ID]`` may set, printed by ``mlprof explain``."""

    name: str
    unit: str
    lo: float
    """Smallest accepted value (the config refuses less)."""
    hi: float
    """Largest accepted value."""
    meaning: str
    default: float = 0.0
    kind: str = "number"
    """``number`` (a float), ``integer`` (a whole number) or ``flag`` (true/false, or 1/0)."""

    def show(self, value: float) -> str:
        """The value as the config file would spell it."""
        if self.kind == "flag":
            return "true" if value else "false"
        return f"{value:g}"

    def convert(self, value: Any) -> float:
        """``value`` as this option's type, range-checked; ValueError with the reason when it is not accepted."""
        if self.kind == "flag" and isinstance(value, bool):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError("must be " + ("true or false" if self.kind == "flag" else "a number"))
        value = finite_or_inf(value)
        if not (self.lo <= value <= self.hi):
            raise ValueError(f"= {value:g} is outside {self.lo:g}..{self.hi:g} ({self.unit})")
        if self.kind in ("integer", "flag") and value != int(value):
            raise ValueError(f"= {value:g} must be a whole number ({self.unit})")
        if self.kind == "flag":
            return bool(value)
        return int(value) if self.kind == "integer" else float(value)


def finite_or_inf(value: int | float) -> int | float:
    """An int too large for a float (``1`` and 400 zeros from TOML) as +/-inf, so range checks and ``:g`` work."""
    if isinstance(value, int) and not -(2**1000) < value < 2**1000:
        return float("inf") if value > 0 else float("-inf")
    return value


COMMON_OPTIONS: dict[str, Option] = {
    "min_share": Option(
        "min_share",
        "share of the step (0-1)",
        0.0,
        1.0,
        "report only when the time the fix saves is at least this share of the step (or of the recording)",
    ),
    "low_util_pct": Option(
        "low_util_pct", "% GPU utilisation", 0.0, 100.0, "a sample under this utilisation counts as an idle GPU"
    ),
    "min_r2": Option(
        "min_r2", "R^2 (0-1)", 0.0, 1.0, "the memory trend must fit a straight line at least this well (R^2)"
    ),
    "min_late_ratio": Option(
        "min_late_ratio",
        "ratio (0-1)",
        0.0,
        1.0,
        "the growth over the last half must be at least this share of the overall growth (not levelling off)",
    ),
}
"""Options several rules share, documented once (:func:`common`)."""


class _Declared:
    """A field's default with its documentation, as written in a :class:`RuleOptions` class body;
    :class:`_OptionsMeta` keeps the default as the field's and the documentation in ``__option_docs__``."""

    __slots__ = ("default", "doc")

    def __init__(self, default: float, doc: Option) -> None:
        self.default = default
        self.doc = doc


def option(default: float, unit: str, lo: float, hi: float, meaning: str) -> Any:
    """A field of a rule's :class:`RuleOptions`: its default and documentation.

    The field's type follows the default: ``bool`` is a flag, ``int`` a whole number, ``float`` a number.
    """
    kind = "flag" if isinstance(default, bool) else "integer" if isinstance(default, int) else "number"
    return _Declared(default, Option("", unit, lo, hi, meaning, default, kind))


def common(name: str, default: float) -> Any:
    """A field documented once in :data:`COMMON_OPTIONS` (``min_share`` and the like)."""
    return _Declared(default, replace(COMMON_OPTIONS[name], default=default))


class _OptionsMeta(msgspec.StructMeta):
    """Reads a :class:`RuleOptions` class body: each field declared with :func:`option` or :func:`common`
    gets its default, and its documentation (named) goes to the class's ``__option_docs__``."""

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> Any:
        docs = [d for b in bases for d in getattr(b, "__option_docs__", ())]
        for key, value in list(namespace.items()):
            if isinstance(value, _Declared):
                namespace[key] = value.default
                docs.append(replace(value.doc, name=key))
        namespace["__option_docs__"] = tuple(docs)
        return super().__new__(mcls, name, bases, namespace, **kwargs)


OptionsT = TypeVar("OptionsT", bound="RuleOptions")


class RuleOptions(msgspec.Struct, frozen=True, metaclass=_OptionsMeta):
    """A rule's thresholds, typed: the detection code reads them as attributes.

    Subclasses declare each threshold with :func:`option` or :func:`common` (every field: :meth:`docs`
    checks it); ``[tool.mlprof.rules.ID]`` and ``--set ID.name=value`` build an instance with :meth:`build`,
    which checks every value against its documented range (a value outside it is refused, never clamped).
    """

    __option_docs__: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    def docs(cls) -> tuple[Option, ...]:
        """Name, unit, accepted range, meaning and default of each threshold, in declaration order."""
        docs = cls.__option_docs__
        if tuple(d.name for d in docs) != cls.__struct_fields__:
            raise TypeError(f"{cls.__name__}: declare every field with option() or common()")
        return docs

    @classmethod
    def build(cls: type[OptionsT], values: Mapping[str, Any] | None = None) -> OptionsT:
        """An instance with ``values`` over the defaults. KeyError for an unknown name, ValueError
        (``'name' = 7 is outside 0..1 (share)``) for a value of the wrong type or out of range."""
        docs = {d.name: d for d in cls.docs()}
        converted: dict[str, Any] = {}
        for name, value in (values or {}).items():
            if name not in docs:
                raise KeyError(name)
            try:
                converted[name] = docs[name].convert(value)
            except ValueError as exc:
                raise ValueError(f"'{name}' {exc}") from None
        return cls(**converted)

    def as_dict(self) -> dict[str, float]:
        """The thresholds by name (what ``mlprof rules`` lists)."""
        return {name: getattr(self, name) for name in self.__struct_fields__}


class NoOptions(RuleOptions, frozen=True):
    """A rule without thresholds."""
