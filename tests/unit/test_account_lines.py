"""The columnar container lines (``ecovisor.core.account_lines.ContainerLines``) behave as
the ``dict[str, AccountLine]`` they replace: same sums, same JSON, same validation."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ecovisor.core.account_lines import AccountLine, ContainerLines
from ecovisor.core.state import AppCumulative

figures = st.integers(min_value=0, max_value=10**12)


@st.composite
def account_lines(draw: st.DrawFn) -> AccountLine:
    s, b, g, u, cu = (draw(figures) for _ in range(5))
    return AccountLine(energy_mj=s + b + g + u, solar_mj=s, battery_mj=b, grid_mj=g,
                       unserved_mj=u, carbon_ug=cu)


@st.composite
def line_dicts(draw: st.DrawFn) -> dict[str, AccountLine]:
    names = draw(st.lists(st.sampled_from([f"c{i}" for i in range(8)]), unique=True,
                          max_size=8))
    return {c: draw(account_lines()) for c in names}


def dict_plus(a: dict[str, AccountLine], b: dict[str, AccountLine]) -> dict[str, AccountLine]:
    """The cumulative sum as the ledger booked it before the lines were columns."""
    out = dict(a)
    for c, line in b.items():
        out[c] = line if c not in out else out[c] + line
    return out


@given(line_dicts(), line_dicts())
def test_plus_is_the_dict_sum_in_the_same_order(a: dict, b: dict) -> None:
    got = ContainerLines.from_lines(a).plus(ContainerLines.from_lines(b))
    want = dict_plus(a, b)
    assert list(got) == list(want)
    assert got == want and dict(got.items()) == want
    assert got.as_dicts() == {c: line.model_dump() for c, line in want.items()}


@given(line_dicts(), st.randoms(use_true_random=False), st.data())
def test_plus_of_the_same_containers_in_another_order(a: dict, rnd: Any,
                                                      data: st.DataObject) -> None:
    """The cumulative's first-seen order against a tick's sorted lines: the permuted
    path gives the dict sum, in self's order."""
    names = list(a)
    rnd.shuffle(names)
    b = {c: data.draw(account_lines()) for c in names}
    got = ContainerLines.from_lines(a).plus(ContainerLines.from_lines(b))
    want = dict_plus(a, b)
    assert list(got) == list(a) == list(want)
    assert got == want and got.as_dicts() == {c: v.model_dump() for c, v in want.items()}


@given(line_dicts())
def test_json_and_python_dumps_are_the_dicts(lines: dict) -> None:
    cols = ContainerLines.from_lines(lines)
    old = AppCumulative.model_validate({"containers": {c: v.model_dump() for c, v in
                                                        lines.items()}})
    assert isinstance(old.containers, ContainerLines) and old.containers == cols
    new = AppCumulative(containers=cols)
    assert new.model_dump_json() == old.model_dump_json()
    assert json.loads(new.model_dump_json())["containers"] == {
        c: v.model_dump() for c, v in lines.items()}
    assert AppCumulative.model_validate_json(new.model_dump_json()) == new
    assert pickle.loads(pickle.dumps(cols)) == cols and copy.deepcopy(cols) == cols


def test_sums_index_and_lookup() -> None:
    a = {"b": AccountLine(energy_mj=5, grid_mj=5, carbon_ug=2),
         "a": AccountLine(energy_mj=3, solar_mj=1, battery_mj=2)}
    cols = ContainerLines.from_lines(a)
    assert cols.sums() == (8, 1, 2, 5, 0, 2)
    assert cols.index("a") == 1 and cols.index("zz") is None
    assert cols["b"] == a["b"] and cols.get("zz") is None and "a" in cols and len(cols) == 2
    assert cols.without_lines(["zz", "b", "y", "a"]) == ["zz", "y"]
    with pytest.raises(KeyError):
        cols["zz"]


def test_a_line_that_does_not_balance_is_refused_from_json() -> None:
    bad = {"containers": {"c": {"energy_mj": 5, "solar_mj": 1, "battery_mj": 0,
                                "grid_mj": 0, "unserved_mj": 0, "carbon_ug": 0}}}
    with pytest.raises(ValidationError, match="energy_mj must equal"):
        AppCumulative.model_validate(bad)
    with pytest.raises(ValidationError):
        AppCumulative.model_validate_json(json.dumps(bad))
    neg = {"containers": {"c": {"energy_mj": -1, "solar_mj": -1}}}
    with pytest.raises(ValidationError):
        AppCumulative.model_validate(neg)


def test_json_schema_is_the_dict_of_lines() -> None:
    schema = AppCumulative.model_json_schema(mode="serialization")
    assert schema["properties"]["containers"]["additionalProperties"] == {
        "$ref": "#/$defs/AccountLine"}
    assert schema == AppCumulative.model_json_schema(mode="validation")
