"""The data-only codec between the checker and the candidate: plain built-in values round-trip, nothing else does."""

import json
import math

import pytest

from ds_benchmark.runner import MAX_DEPTH, decode, encode

PLAIN = [None, True, 0, -7, 10**400, 1.5, math.inf, -math.inf, "", "a\nb\ud800", [1, [2.0]], (1, "x", None),
         {1, (2, 3)}, frozenset({"a"}), {"k": [1], (1, 2): {3: 4.0}, None: True}, [], (), {}]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_round_trip_through_json_with_their_exact_types(value):
    back = decode(json.loads(json.dumps(encode(value))))
    assert back == value and type(back) is type(value)
    if isinstance(value, (list, tuple)):
        assert [type(v) for v in back] == [type(v) for v in value]


def test_nan_survives():
    assert math.isnan(decode(json.loads(json.dumps(encode(math.nan)))))


class Sneaky(int):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("value, kind", [(Sneaky(1), "Sneaky"), (object(), "builtins.object"),
                                         (iter([]), "list_iterator"), ([1, {2: b"x"}], "builtins.bytes")])
def test_anything_else_cannot_be_encoded(value, kind):
    with pytest.raises(TypeError, match=kind):
        encode(value)


@pytest.mark.parametrize("data", [[1, 2], {"list": 1}, {"dict": [[1]]}, {"object": []}, {"list": [], "set": []},
                                  {"set": [{"list": []}]}])
def test_what_a_hostile_candidate_sends_decodes_to_plain_values_or_fails(data):
    with pytest.raises((ValueError, TypeError)):  # TypeError: an unhashable item for a set
        decode(data)


def test_nesting_is_bounded_both_ways():
    deep = []
    for _ in range(MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(TypeError, match="nested too deeply"):
        encode(deep)
    data = {"list": []}
    for _ in range(MAX_DEPTH + 2):
        data = {"list": [data]}
    with pytest.raises(ValueError, match="nested too deeply"):
        decode(data)
