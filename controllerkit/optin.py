"""The opt-in annotation, read one way everywhere (the initializer and podwatch must agree on it)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

#: the tutorial's annotation: a Deployment created with it set to "true" is locked
DEFAULT_ANNOTATION = "initializer.kubernetes.io/tproxy"


def is_true(value: Any) -> bool:
    """``"true"`` in any case, surrounding blanks ignored; anything else (absent, ``"1"``, ``True``) is not."""
    return isinstance(value, str) and value.strip().lower() == "true"


def value_of(meta: Optional[Mapping], annotation: str) -> Optional[Any]:
    """An object metadata's annotation, or None."""
    annotations = (meta or {}).get("annotations") or {}
    return annotations.get(annotation) if isinstance(annotations, Mapping) else None
