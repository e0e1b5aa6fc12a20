"""The one deadline knob (``TPROXY_TEST_TIMEOUT_SCALE``) and ``wait_for``'s failure message."""

import pytest

from kubesim import polling
from kubesim.polling import scaled, timeout_scale, wait_for


def test_scale_defaults_to_one(monkeypatch):
    monkeypatch.delenv(polling.SCALE_ENV, raising=False)
    assert timeout_scale() == 1.0 and scaled(7) == 7


def test_scale_multiplies_every_deadline(monkeypatch):
    monkeypatch.setenv(polling.SCALE_ENV, "3")
    assert scaled(20) == 60
    clock = {"t": 0.0}
    monkeypatch.setattr(polling.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(polling.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    calls = []
    with pytest.raises(AssertionError) as e:
        wait_for(lambda: calls.append(1), timeout=2, interval=0.5, what="the thing")
    assert len(calls) == 13  # 0, 0.5, ..., 6.0: the 2 s deadline became 6 s
    assert "6s (2s x TPROXY_TEST_TIMEOUT_SCALE=3)" in str(e.value) and "the thing" in str(e.value)


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "nan", "inf"])
def test_a_bad_scale_is_an_error_not_a_shorter_deadline(monkeypatch, bad):
    monkeypatch.setenv(polling.SCALE_ENV, bad)
    with pytest.raises(ValueError, match=polling.SCALE_ENV):
        timeout_scale()


def test_timeout_names_what_it_waited_for_and_what_it_saw(monkeypatch):
    monkeypatch.delenv(polling.SCALE_ENV, raising=False)
    with pytest.raises(AssertionError, match=r"waiting for pods ready; last value: \['pending'\]"):
        wait_for(lambda: _Seen(), 0.01, what="pods ready")


class _Seen(list):
    """Falsy, with a repr: what a condition that saw something not yet right returns."""

    def __repr__(self):
        return "['pending']"


def test_a_condition_that_holds_returns_its_value_at_once():
    assert wait_for(lambda: {"ok": 1}, timeout=0) == {"ok": 1}
