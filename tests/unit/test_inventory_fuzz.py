"""Property: any YAML-shaped input is either a valid inventory or one InventoryError sentence."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from datacloud import capacity
from datacloud.errors import InventoryError
from datacloud.inventory import Inventory, parse_inventory

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())

HOSTILE = ["; rm -rf /", "$(reboot)", "`id`", "a\nb", "", " ", "../../etc", "\x00", "é", "10.0.0.1/33", "-1", "1e400"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(HOSTILE),
    st.sampled_from(["192.168.1.9", "192.168.1.0/24", "10.96.0.0/12", "ceph", "none", "worker", "control-plane", "/dev/sdc"]),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


ALL_PATHS = [p for p in _paths(BASE) if p]


@st.composite
def inventories(draw):
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(values)  # anything at all
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(values)
        except (KeyError, IndexError, TypeError):
            continue
    return data


# Hypothesis found it: a field name with a newline in it made a two-line message.
NEWLINE_KEY = copy.deepcopy(BASE)
NEWLINE_KEY["nodes"][0]["a\nb"] = 1


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(inventories())
@example(NEWLINE_KEY)
@example({"nodes": [{"\n": None}]})
def test_valid_or_one_sentence(data) -> None:
    try:
        inv = parse_inventory(data)
    except InventoryError as exc:
        message = str(exc)
        assert message and "\n" not in message and message.endswith("."), message
        assert "Traceback" not in message and "pydantic" not in message.lower(), message
        return
    assert isinstance(inv, Inventory)
    capacity.plan(inv)  # a valid inventory always gets a capacity plan
