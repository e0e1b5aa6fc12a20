"""Properties of kubesim's patch implementations (pure functions, no server)."""

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubesim.apiserver.patch import PatchError, json_merge_patch, json_patch, strategic_merge_patch

keys = st.sampled_from(["a", "b", "c", "metadata", "spec"])
scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3)
no_lists = st.recursive(
    scalars.filter(lambda v: v is not None), lambda inner: st.dictionaries(keys, inner, max_size=3), max_leaves=8
)
patches = st.recursive(scalars, lambda inner: st.dictionaries(keys, inner, max_size=3), max_leaves=8)
docs = st.dictionaries(keys, no_lists, max_size=4)


@given(docs)
def test_empty_merge_patch_is_identity(doc):
    assert json_merge_patch(doc, {}) == doc
    assert strategic_merge_patch(doc, {}) == doc


@given(docs, st.dictionaries(keys, patches, max_size=3))
def test_strategic_equals_json_merge_without_lists(doc, patch):
    """Without lists or directives, a strategic merge patch is an RFC 7386 merge patch."""
    before = copy.deepcopy(doc)
    assert strategic_merge_patch(doc, patch) == json_merge_patch(doc, patch)
    assert doc == before, "patching never mutates its input"


@given(docs, st.dictionaries(keys, patches, max_size=3))
def test_merge_patch_is_idempotent(doc, patch):
    once = json_merge_patch(doc, patch)
    assert json_merge_patch(once, patch) == once


@given(docs, no_lists)
def test_json_patch_add_then_remove_round_trips(doc, value):
    key = "zz"
    added = json_patch(doc, [{"op": "add", "path": f"/{key}", "value": value}])
    assert added[key] == value
    assert json_patch(added, [{"op": "remove", "path": f"/{key}"}]) == doc


def test_json_patch_errors_are_patch_errors():
    for ops in (
        [{"op": "remove", "path": "/missing"}],
        [{"op": "replace", "path": "/x", "value": 1}],
        [{"op": "test", "path": "/a", "value": 2}],
        [{"op": "bogus", "path": "/a"}],
        [{"path": "/a"}],
        {"op": "add"},
        [{"op": "add", "path": "a", "value": 1}],
    ):
        with pytest.raises(PatchError):
            json_patch({"a": 1}, ops)


def test_json_patch_arrays_and_escapes():
    doc = {"l": [1, 2], "a/b": {"~": 0}}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/l/-", "value": 3},
            {"op": "add", "path": "/l/0", "value": 0},
            {"op": "replace", "path": "/a~1b/~0", "value": 9},
            {"op": "move", "from": "/l/3", "path": "/last"},
            {"op": "copy", "from": "/last", "path": "/c"},
        ],
    )
    assert out == {"l": [0, 1, 2], "a/b": {"~": 9}, "last": 3, "c": 3}


def test_strategic_list_merge_by_key_keeps_order_and_appends():
    doc = {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}
    out = strategic_merge_patch(doc, {"containers": [{"name": "b", "image": "3"}, {"name": "c", "image": "4"}]})
    assert out == {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "3"}, {"name": "c", "image": "4"}]}
    with pytest.raises(PatchError, match="does not contain declared merge key"):
        strategic_merge_patch(doc, {"containers": [{"image": "x"}]})
