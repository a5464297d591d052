"""Spec fuzzing: every mutation of a valid campaign validates or gets one clear SpecError."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftsafe_ray.errors import SpecError
from ftsafe_ray.spec import parse_campaign

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

DEMO = yaml.safe_load((Path(__file__).parents[1] / "campaigns" / "demo.yaml").read_text())

# Values a hand-edited YAML file can hold where another was expected.
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside nested dicts and lists."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


PATHS = _paths(DEMO)


def _mutate(spec: dict, path: tuple, action: str, value: Any) -> dict:
    spec = copy.deepcopy(spec)
    parent = spec
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    else:  # add an unknown field next to the value
        target = parent[last] if isinstance(parent[last], dict) else parent
        if isinstance(target, dict):
            target["unexpected_field"] = value
    return spec


def test_the_demo_is_valid():
    assert parse_campaign(DEMO).name == "demo"


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(
    mutations=st.lists(
        st.tuples(
            st.sampled_from(PATHS), st.sampled_from(["replace", "delete", "add"]), ODD_VALUES
        ),
        min_size=1,
        max_size=3,
    )
)
@pytest.mark.reliability(
    fault="A hand-edited campaign file with any field removed, retyped or added (hypothesis)",
    outcome="it validates or gets SpecError lines naming the file and field; never a traceback",
)
def test_every_mutation_validates_or_gets_one_clear_error(mutations):
    spec: Any = DEMO
    for path, action, value in mutations:
        try:
            spec = _mutate(spec, path, action, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or reshaped this path
    try:
        parse_campaign(spec, source="fuzz.yaml")
    except SpecError as error:
        lines = str(error).splitlines()
        assert lines and all(line.startswith("fuzz.yaml") for line in lines), str(error)
        assert "Traceback" not in str(error)
