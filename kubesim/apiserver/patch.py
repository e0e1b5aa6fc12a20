"""The three PATCH flavours of the API server, applied to plain JSON-like dicts.

- strategic merge patch (``application/strategic-merge-patch+json``) with the merge keys of the
  core types (containers, initContainers, volumes, env by ``name``; volumeMounts by ``mountPath``;
  container ports by ``containerPort``, service ports by ``port``) and the ``$patch``
  directives ``delete``, ``replace`` and ``merge``; any other list is replaced wholesale, which is
  exactly the 1.7 trap for ``metadata.initializers.pending`` (no merge key until 1.8);
- JSON merge patch (RFC 7386, ``application/merge-patch+json``);
- JSON patch (RFC 6902, ``application/json-patch+json``). Written here rather than pulling in a
  dependency: it is sixty lines and its errors must become 422s with clear messages.
"""

from __future__ import annotations

import copy
from typing import Callable


class PatchError(ValueError):
    """The patch cannot be applied; the server answers 422 (or 400 for malformed patches)."""


def json_merge_patch(target, patch):
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = json_merge_patch(result.get(k), v)
    return result


# ---- strategic merge ------------------------------------------------------------------------


def default_merge_key(path: tuple[str, ...], pending_merge_key: bool = False) -> str | None:
    """Return the patchMergeKey of the list at ``path`` (a tuple of dict keys), None if the list
    has no merge strategy (then a patch replaces it)."""
    if not path:
        return None
    last = path[-1]
    if last in ("containers", "initContainers", "volumes", "env", "imagePullSecrets"):
        return "name"
    if last == "volumeMounts":
        return "mountPath"
    if last == "ports":
        if len(path) >= 2 and path[-2] in ("containers", "initContainers"):
            return "containerPort"
        return "port"
    if last == "ownerReferences":
        return "uid"
    if last == "hostAliases":
        return "ip"
    if last == "pending" and pending_merge_key and path[-2:] == ("initializers", "pending"):
        return "name"
    return None


def strategic_merge_patch(target, patch, merge_key: Callable[[tuple], str | None] = default_merge_key, path: tuple = ()):
    """Apply a strategic merge patch; ``merge_key(path)`` tells which lists merge and by what key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    patch = dict(patch)
    directive = patch.pop("$patch", None)
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: v for k, v in copy.deepcopy(patch).items() if not k.startswith("$")}
    if directive not in (None, "merge"):
        raise PatchError(f"Unknown patch type: {directive}")
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$setElementOrder/") or k.startswith("$retainKeys"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            key = k.split("/", 1)[1]
            if isinstance(result.get(key), list) and isinstance(v, list):
                result[key] = [x for x in result[key] if x not in v]
            continue
        if v is None:
            result.pop(k, None)
            continue
        sub = path + (k,)
        if isinstance(v, list):
            mk = merge_key(sub)
            cur = result.get(k)
            result[k] = _merge_list(cur if isinstance(cur, list) else [], v, mk, merge_key, sub)
        elif isinstance(v, dict):
            merged = strategic_merge_patch(result.get(k), v, merge_key, sub)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
        else:
            result[k] = copy.deepcopy(v)
    return result


def _merge_list(cur: list, patch: list, mk: str | None, merge_key, path):
    # {"$patch": "replace"} anywhere in the list: the rest of the list replaces the original.
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    if mk is None:
        if any(isinstance(p, dict) and "$patch" in p for p in patch):
            raise PatchError(f"$patch directive in a list without a merge key at {'.'.join(path)}")
        return copy.deepcopy(patch)
    result = copy.deepcopy(cur)
    for p in patch:
        if not isinstance(p, dict):
            raise PatchError(f"list at {'.'.join(path)} merges by {mk!r}: elements must be objects")
        if mk not in p:
            raise PatchError(f"map: {p} does not contain declared merge key: {mk}")
        idx = next((i for i, e in enumerate(result) if isinstance(e, dict) and e.get(mk) == p[mk]), None)
        if p.get("$patch") == "delete":
            if idx is not None:
                result = [e for e in result if not (isinstance(e, dict) and e.get(mk) == p[mk])]
            continue
        if idx is None:
            result.append({k: v for k, v in copy.deepcopy(p).items() if not k.startswith("$")})
        else:
            result[idx] = strategic_merge_patch(result[idx], p, merge_key, path)
    return result


# ---- JSON patch (RFC 6902) ------------------------------------------------------------------


def _unescape(tok: str) -> str:
    return tok.replace("~1", "/").replace("~0", "~")


def _parse_pointer(ptr: str) -> list[str]:
    if ptr == "":
        return []
    if not ptr.startswith("/"):
        raise PatchError(f"invalid JSON pointer {ptr!r}: must start with '/'")
    return [_unescape(t) for t in ptr[1:].split("/")]


def _walk(doc, toks, ptr):
    cur = doc
    for t in toks:
        if isinstance(cur, dict):
            if t not in cur:
                raise PatchError(f"doc is missing path: {ptr}")
            cur = cur[t]
        elif isinstance(cur, list):
            try:
                cur = cur[int(t)]
            except (ValueError, IndexError):
                raise PatchError(f"doc is missing path: {ptr}") from None
        else:
            raise PatchError(f"doc is missing path: {ptr}")
    return cur


def _get(doc, ptr):
    return _walk(doc, _parse_pointer(ptr), ptr)


def _remove(doc, ptr):
    toks = _parse_pointer(ptr)
    if not toks:
        raise PatchError("cannot remove the whole document")
    parent = _walk(doc, toks[:-1], ptr)
    last = toks[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"Unable to remove nonexistent key: {last}: missing value")
        return parent.pop(last)
    if isinstance(parent, list):
        try:
            return parent.pop(int(last))
        except (ValueError, IndexError):
            raise PatchError(f"Unable to access invalid index: {last}: invalid index referenced") from None
    raise PatchError(f"doc is missing path: {ptr}")


def _add(doc, ptr, value, replace=False):
    toks = _parse_pointer(ptr)
    if not toks:
        return value
    parent = _walk(doc, toks[:-1], ptr)
    last = toks[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise PatchError(f"replace operation does not apply: doc is missing key: {ptr}")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        else:
            try:
                i = int(last)
            except ValueError:
                raise PatchError(f"invalid index {last!r} in {ptr}") from None
            if i < 0 or i > len(parent) or (replace and i == len(parent)):
                raise PatchError(f"Unable to access invalid index: {i}: invalid index referenced")
            if replace:
                parent[i] = value
            else:
                parent.insert(i, value)
    else:
        raise PatchError(f"doc is missing path: {ptr}")
    return doc


def json_patch(doc, ops):
    """Apply an RFC 6902 patch (a list of operations) to a deep copy of ``doc``."""
    if not isinstance(ops, list):
        raise PatchError("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid operation {op!r}: needs 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {kind} at {path} needs 'value'")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=True)
        elif kind == "move":
            val = _remove(doc, op.get("from", ""))
            doc = _add(doc, path, val)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op.get("from", ""))))
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"testing value {path} failed")
        else:
            raise PatchError(f"Unexpected kind: {kind}")
    return doc


MEDIA_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json")


class UnsupportedPatchType(ValueError):
    """A PATCH whose Content-Type is none of :data:`MEDIA_TYPES` (the server answers 415)."""


def apply_patch(ctype: str, target, patch, merge_key: Callable[[tuple], str | None] = default_merge_key):
    """Apply ``patch`` of media type ``ctype`` to ``target``: the one dispatch of every PATCH handler.
    Raises :class:`UnsupportedPatchType` for another media type, :class:`PatchError` when it cannot apply."""
    if ctype == "application/json-patch+json":
        return json_patch(target, patch)
    if ctype == "application/merge-patch+json":
        return json_merge_patch(target, patch)
    if ctype == "application/strategic-merge-patch+json":
        return strategic_merge_patch(target, patch, merge_key)
    raise UnsupportedPatchType(
        f"the server does not support the media type {ctype!r} for PATCH; use {', '.join(MEDIA_TYPES[:-1])} or {MEDIA_TYPES[-1]}"
    )
