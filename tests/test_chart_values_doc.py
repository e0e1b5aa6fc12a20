"""chart/README.md's values table and chart/values.yaml say the same thing: every key, every default."""

from __future__ import annotations

import json
import re

import yaml

from chart_helpers import CHART

ROW = re.compile(r"^\|\s*`(?P<key>[^`]+)`\s*\|(?P<desc>.*)\|\s*(?P<default>.*?)\s*\|\s*$")


def _table() -> dict[str, str]:
    text = (CHART / "README.md").read_text()
    section = text[text.index("## Values") :]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    rows = {}
    for line in section.splitlines():
        m = ROW.match(line)
        if m:
            assert m["key"] not in rows, f"README lists {m['key']} twice"
            rows[m["key"]] = m["default"]
    return rows


def _leaves(node, prefix=""):
    """Dotted paths of values.yaml's leaves (scalars and lists; mappings are descended)."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, node


def _lookup(values, key):
    node = values
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"README documents {key}, which values.yaml does not have"
        node = node[part]
    return node


def test_table_parses():
    rows = _table()
    assert len(rows) >= 20
    assert "tproxy.hostPort" in rows and rows["tproxy.hostPort"] == "`8080`"


def test_every_value_is_documented_exactly_once():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = set(_table())
    for path, _ in _leaves(values):
        covering = [k for k in documented if path == k or path.startswith(k + ".")]
        assert len(covering) == 1, f"values.yaml key {path} is documented by {covering or 'no row'} in chart/README.md"


def test_every_documented_key_exists_with_its_default():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key, default in _table().items():
        actual = _lookup(values, key)
        m = re.fullmatch(r"`(.*)`", default)
        assert m, f"README default for {key} must be one `code span`, got {default!r}"
        assert yaml.safe_load(m.group(1)) == actual, f"README says {key} defaults to {m.group(1)}, values.yaml says {actual!r}"


def test_the_original_value_names_are_kept():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in (
        "images.tproxy_registry",
        "images.pullPolicy",
        "images.mitmproxy",
        "images.tproxy_initializer",
        "images.tproxy_podwatch",
        "images.tproxy_sidecar",
        "tproxy.useRBAC",
        "tproxy.useInitializer",
        "tproxy.hostPort",
        "tproxy.addStandardModeProxy",
        "tproxy.blockSvcCIDR",
        "tproxy.allowDNS",
        "tproxy.resources",
    ):
        _lookup(values, key)
    assert values["tproxy"]["hostPort"] == 8080


def _schema_leaves(schema, root, prefix="", values=None):
    """Dotted paths of the schema's declared properties (descending into nested objects, except
    where values.yaml's default is an empty mapping the user fills, such as a label selector)."""
    for key, sub in (schema.get("properties") or {}).items():
        if "$ref" in sub:
            sub = root["definitions"][sub["$ref"].rsplit("/", 1)[1]]
        path = f"{prefix}.{key}" if prefix else key
        default = values.get(key) if isinstance(values, dict) else None
        if sub.get("type") == "object" and "properties" in sub and "resources" not in key and default != {}:
            yield from _schema_leaves(sub, root, path, default)
        else:
            yield path


def test_values_schema_accepts_values_yaml_and_declares_exactly_its_keys():
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)  # additionalProperties: false -> no undeclared key
    declared = set(_schema_leaves(schema, schema, values=values)) - {"global"}  # Helm's own key for subcharts
    leaves = [path for path, _ in _leaves(values)]
    for key in declared:  # nothing declared that values.yaml lacks
        assert any(p == key or p.startswith(key + ".") for p in leaves), f"schema declares {key}, values.yaml has none"
