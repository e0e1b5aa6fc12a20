"""Label and field selectors, parsed the way the API server parses the query strings.

Label selector grammar (k8s.io/apimachinery/pkg/labels): ``a=b``, ``a==b``, ``a!=b``,
``a in (x,y)``, ``a notin (x)``, ``a`` (exists), ``!a`` (does not exist), comma-separated (AND).
Field selectors support ``=``, ``==`` and ``!=`` on the fields each resource registers.
"""

from __future__ import annotations

import re
from typing import Callable


class SelectorError(ValueError):
    """Unparseable selector; the server answers 400 BadRequest with this message."""


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([A-Za-z0-9_./-]+)\s+(in|notin)\s+\((.*)\)$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_./-]+$")


def parse_label_selector(s: str | None) -> Callable[[dict], bool]:
    """Compile a label selector string into a predicate over a labels dict."""
    if not s:
        return lambda labels: True
    reqs = []
    for term in _split_top(s):
        m = _SET_RE.match(term)
        if m:
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                reqs.append(lambda l, k=key, v=vals: l.get(k) in v)
            else:
                reqs.append(lambda l, k=key, v=vals: l.get(k) not in v)
            continue
        for op in ("!=", "==", "="):
            if op in term:
                key, _, val = term.partition(op)
                key, val = key.strip(), val.strip()
                if not _KEY_RE.match(key):
                    raise SelectorError(f"unable to parse requirement: invalid label key {key!r}")
                if op == "!=":
                    reqs.append(lambda l, k=key, v=val: l.get(k) != v)
                else:
                    reqs.append(lambda l, k=key, v=val: l.get(k) == v)
                break
        else:
            if term.startswith("!"):
                key = term[1:].strip()
                if not _KEY_RE.match(key):
                    raise SelectorError(f"unable to parse requirement: invalid label key {key!r}")
                reqs.append(lambda l, k=key: k not in l)
            elif _KEY_RE.match(term):
                reqs.append(lambda l, k=term: k in l)
            else:
                raise SelectorError(f"unable to parse requirement: {term!r}")
    return lambda labels: all(r(labels) for r in reqs)


def get_path(obj: dict, dotted: str):
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def parse_field_selector(s: str | None, allowed: tuple[str, ...]) -> Callable[[dict], bool]:
    """Compile a field selector into a predicate over a whole object.

    ``allowed`` lists the field paths this resource supports; any other field is a 400, with the
    1.7 message shape.
    """
    if not s:
        return lambda obj: True
    reqs = []
    for term in _split_top(s):
        for op in ("!=", "==", "="):
            if op in term:
                field, _, val = term.partition(op)
                field, val = field.strip(), val.strip()
                break
        else:
            raise SelectorError(f"invalid selector: '{s}'; can't understand '{term}'")
        if field not in allowed:
            raise SelectorError(f'"{field}" is not a known field selector: only "' + '", "'.join(allowed) + '"')
        if op == "!=":
            reqs.append(lambda o, f=field, v=val: (get_path(o, f) or "") != v)
        else:
            reqs.append(lambda o, f=field, v=val: (get_path(o, f) or "") == v)
    return lambda obj: all(r(obj) for r in reqs)


def exact_name(s: str | None) -> str | None:
    """If the field selector pins metadata.name to one value, return it (a fast path for lookups)."""
    if not s:
        return None
    for term in _split_top(s):
        for op in ("==", "="):
            if term.startswith("metadata.name" + op):
                return term[len("metadata.name" + op) :].strip()
    return None
