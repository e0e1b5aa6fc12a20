"""controllerkit.durations and controllerkit.optin: one Go-duration parser, one opt-in check."""

import pytest

from controllerkit.durations import format_go_duration, parse_go_duration, parse_seconds
from controllerkit.optin import DEFAULT_ANNOTATION, is_true, value_of
from initializer.mutate import is_annotated
from podwatch.rules import annotated


@pytest.mark.parametrize(
    "text,seconds",
    [("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("1.5h", 5400), ("2m", 120), ("0", 0), ("100us", 1e-4), ("10ns", 1e-8)],
)
def test_go_durations(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "1x", "1m 30s", "-1s", "1s2"])
def test_not_go_durations(text):
    assert parse_go_duration(text) is None


def test_seconds_take_plain_numbers_too():
    assert parse_seconds("2.5") == 2.5 and parse_seconds("1m") == 60 and parse_seconds("x") is None


def test_format_is_what_the_server_prints():
    assert [format_go_duration(s) for s in (30, 90, 0.5)] == ["30s", "1m30s", "0.5s"]


@pytest.mark.parametrize(
    "value,expected",
    [("true", True), (" TRUE ", True), ("True", True), ("1", False), ("yes", False), (True, False), (None, False), ("", False)],
)
def test_the_initializer_and_podwatch_read_the_annotation_the_same_way(value, expected):
    obj = {"metadata": {"annotations": {DEFAULT_ANNOTATION: value}}}
    assert is_true(value) is expected
    assert is_annotated(obj, DEFAULT_ANNOTATION) is expected
    assert annotated(obj, DEFAULT_ANNOTATION) is expected
    assert value_of(obj["metadata"], DEFAULT_ANNOTATION) == value
