"""Account lines: one line's energy by source and its carbon (``AccountLine``), the lines
of an app's containers held as columns (``ContainerLines``), and ``unchecked``, the
construction of models the step has just computed and checked.

Pure, no I/O. Energy in integer mJ, carbon in integer µg.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from operator import add, itemgetter
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, NonNegativeInt, model_validator
from pydantic.json_schema import GetJsonSchemaHandler, JsonSchemaValue
from pydantic_core import core_schema

# the core's value models (lines, flows, settings, state): frozen, no extra field, no
# inf/nan (``state`` uses it too)
FROZEN = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

M = TypeVar("M", bound=BaseModel)
_new = object.__new__
# BaseModel's own slot descriptors: setting through them skips the attribute lookup
# along the model's MRO that ``object.__setattr__(m, name, v)`` does (~0.1 µs each,
# four per model, ~20 models per app-tick)
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def unchecked(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of ``cls`` holding ``values`` (EVERY field, in the order the model
    declares them, each already of its type) as they are, without validation: for the
    models the step builds per container and per tick from integers it has just
    computed and checked (the sum of two valid lines is a valid line). About 3x cheaper
    than validating, and than ``model_construct`` (which fills defaults). Equal, and
    serialised identically, to the validated instance."""
    m = _new(cls)
    _set_dict(m, values)
    fields = _FIELDS_SET.get(cls)
    _set_fields_set(m, fields if fields is not None else _all_fields(cls))
    _set_extra(m, None)
    _set_private(m, None)
    return m


_FIELDS_SET: dict[type[BaseModel], set[str]] = {}


def _all_fields(cls: type[BaseModel]) -> set[str]:
    """One "fields set" per class, shared by its unchecked instances: a set per instance
    doubled the objects the garbage collector tracks per line built. Sharing is safe as
    pydantic changes a model's fields set only when assigning to a field (these models
    are frozen) and copies it in ``model_copy``/``copy``; equality ignores it. Never
    mutate ``model_fields_set`` of a core model."""
    return _FIELDS_SET.setdefault(cls, set(cls.model_fields))


Mj = NonNegativeInt  # energy, integer millijoules
Ug = NonNegativeInt  # carbon, integer micrograms


class AccountLine(BaseModel):
    """Energy by source and carbon booked on one account line (a container, the app's
    ``battery_charging`` line, the app total). ``energy_mj`` is the sum of the four
    sources; carbon comes only from grid energy."""

    model_config = FROZEN

    energy_mj: Mj = 0
    solar_mj: Mj = 0
    battery_mj: Mj = 0
    grid_mj: Mj = 0
    unserved_mj: Mj = 0
    carbon_ug: Ug = 0

    @model_validator(mode="after")
    def _energy_is_sum(self) -> AccountLine:
        if self.energy_mj != self.solar_mj + self.battery_mj + self.grid_mj + self.unserved_mj:
            raise ValueError("energy_mj must equal solar + battery + grid + unserved")
        return self

    def __add__(self, other: AccountLine) -> AccountLine:
        # non-negative ints that balance, summed field by field, still do: no re-check
        a, b = self.__dict__, other.__dict__
        return unchecked(AccountLine, {f: a[f] + b[f] for f in LINE_FIELDS})


LINE_FIELDS = tuple(AccountLine.model_fields)  # the JSON order of a line's figures
ZERO_LINE = AccountLine()


class ContainerLines(Mapping[str, AccountLine]):
    """The account lines of an app's containers, one column per figure (``energy``,
    ``solar``, ``battery``, ``grid``, ``unserved``, ``carbon``: tuples of ints, row i is
    container ``names[i]``), read as a ``Mapping[str, AccountLine]`` in ``names`` order.

    Why columns: the step books a line per container and tick and adds it to the
    container's cumulative line; as models that was two objects and ~3 µs per container
    and tick, the larger part of the step at 1,000 containers. As columns the tick's
    lines are the split's lists, and the cumulative sum is one ``map(add)`` per column.
    A line is made a model only when one is read by name.

    Valid by construction in the step (every row balances, as the split makes it); from
    JSON or a dict each line is validated as an ``AccountLine``. Serialised exactly as
    the ``dict[str, AccountLine]`` it replaces (same JSON, same JSON schema)."""

    __slots__ = ("names", "energy", "solar", "battery", "grid", "unserved", "carbon", "_index")

    names: tuple[str, ...]
    energy: tuple[int, ...]
    solar: tuple[int, ...]
    battery: tuple[int, ...]
    grid: tuple[int, ...]
    unserved: tuple[int, ...]
    carbon: tuple[int, ...]

    def __init__(self, names: tuple[str, ...], energy: tuple[int, ...], solar: tuple[int, ...],
                 battery: tuple[int, ...], grid: tuple[int, ...], unserved: tuple[int, ...],
                 carbon: tuple[int, ...]) -> None:
        self.names, self.energy, self.solar, self.battery = names, energy, solar, battery
        self.grid, self.unserved, self.carbon = grid, unserved, carbon
        self._index: dict[str, int] | None = None

    # --- construction ---------------------------------------------------------------

    @classmethod
    def from_lines(cls, lines: Mapping[str, AccountLine]) -> ContainerLines:
        """Columns of ``lines`` (each already a valid ``AccountLine``), in their order."""
        if isinstance(lines, ContainerLines):
            return lines
        rows = [line.__dict__ for line in lines.values()]
        return cls(tuple(lines), *(tuple(r[f] for r in rows) for f in LINE_FIELDS))

    def columns(self) -> tuple[tuple[int, ...], ...]:
        """The six columns in ``LINE_FIELDS`` order."""
        return (self.energy, self.solar, self.battery, self.grid, self.unserved, self.carbon)

    def plus(self, other: ContainerLines) -> ContainerLines:
        """Line by line sum (the cumulative lines after a tick's): every container of
        ``self`` in its place, those only in ``other`` after them in ``other``'s order."""
        if self.names == other.names:  # the steady state: the same containers
            return ContainerLines(
                self.names, tuple(map(add, self.energy, other.energy)),
                tuple(map(add, self.solar, other.solar)),
                tuple(map(add, self.battery, other.battery)),
                tuple(map(add, self.grid, other.grid)),
                tuple(map(add, self.unserved, other.unserved)),
                tuple(map(add, self.carbon, other.carbon)))
        n = len(self.names)
        if n == len(other.names) and n > 1:
            # the same containers in another order (the cumulative keeps first-seen order,
            # a tick's lines are sorted: every tick after a container joined): other's
            # columns permuted into self's rows, summed column-wise at C speed
            rows = list(map(other._names_index().get, self.names))
            if None not in rows:
                take = itemgetter(*rows)
                return ContainerLines(self.names, *(
                    tuple(map(add, mine, take(theirs)))
                    for mine, theirs in zip(self.columns(), other.columns(), strict=True)))
        index = dict(self._names_index())
        names = list(self.names)
        cols = [list(c) for c in self.columns()]
        for j, c in enumerate(other.names):
            i = index.get(c)
            if i is None:
                index[c] = len(names)
                names.append(c)
                for col, o in zip(cols, other.columns(), strict=True):
                    col.append(o[j])
            else:
                for col, o in zip(cols, other.columns(), strict=True):
                    col[i] += o[j]
        return ContainerLines(tuple(names), *(tuple(c) for c in cols))

    # --- reading --------------------------------------------------------------------

    def _names_index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {c: i for i, c in enumerate(self.names)}
        return self._index

    def index(self, container: str) -> int | None:
        """Row of ``container``, None when it has no line."""
        return self._names_index().get(container)

    def without_lines(self, containers: Iterable[str]) -> list[str]:
        """Those of ``containers`` that have no line, in their order (one dict lookup
        each: per configured container and tick in the tick notification)."""
        index = self._names_index()
        return [c for c in containers if c not in index]

    def sums(self) -> tuple[int, int, int, int, int, int]:
        """Column totals, in ``LINE_FIELDS`` order."""
        return (sum(self.energy), sum(self.solar), sum(self.battery), sum(self.grid),
                sum(self.unserved), sum(self.carbon))

    def __getitem__(self, container: str) -> AccountLine:
        i = self._names_index()[container]
        return unchecked(AccountLine, {f: col[i] for f, col in
                                       zip(LINE_FIELDS, self.columns(), strict=True)})

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, container: object) -> bool:
        return container in self._names_index()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ContainerLines):
            return self.names == other.names and self.columns() == other.columns()
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as the dict it stands for

    def __repr__(self) -> str:
        return f"ContainerLines({dict(self.items())!r})"

    def as_dicts(self) -> dict[str, dict[str, int]]:
        """The JSON form: ``{container: {energy_mj, solar_mj, ...}}``."""
        return {c: {"energy_mj": e, "solar_mj": s, "battery_mj": b, "grid_mj": g,
                    "unserved_mj": u, "carbon_ug": cu}
                for c, e, s, b, g, u, cu in zip(self.names, *self.columns(), strict=True)}

    # --- pydantic -------------------------------------------------------------------

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler
                                     ) -> core_schema.CoreSchema:
        as_dict = handler.generate_schema(dict[str, AccountLine])
        from_dict = core_schema.no_info_after_validator_function(cls.from_lines, as_dict)
        lines_json = core_schema.dict_schema(
            core_schema.str_schema(),
            core_schema.dict_schema(core_schema.str_schema(), core_schema.int_schema()))
        return core_schema.json_or_python_schema(
            json_schema=from_dict,
            python_schema=core_schema.union_schema(
                [core_schema.is_instance_schema(cls), from_dict]),
            serialization=core_schema.plain_serializer_function_ser_schema(
                cls.as_dicts, return_schema=lines_json),
            metadata={"container_lines_dict_schema": as_dict},
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # documented as what it serialises to and is validated from: dict[str, AccountLine]
        return handler(schema["metadata"]["container_lines_dict_schema"])  # type: ignore[index]


EMPTY_LINES = ContainerLines((), (), (), (), (), (), ())
