"""The injection configuration: the ``config`` key of the initializer's ConfigMap.

The schema is the original tutorial's (danisla/kubernetes-tproxy, ``cmd/tproxy-initializer``)::

    containers:    [Container]    # init containers added to every initialized pod template
    volumes:       [Volume]       # volumes added to the pod template
    volumeMounts:  [VolumeMount]  # mounts added to every (user) container
    envVars:       [EnvVar]       # env added to every (user) container

The original decoded it with ghodss/yaml into a Go struct, so field names matched
case-insensitively (``Containers`` works as well as ``containers``) and YAML or JSON were both
accepted. We keep that, but unlike the original we *validate*: an unknown top-level key (a typo
such as ``volumeMount``), a wrong type, a missing name or a duplicate is a ``ConfigError`` whose
message names the offending path, because a silently ignored key means pods start unprotected.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

CONFIG_KEY = "config"

# Kubernetes name rules (apimachinery validation): container, volume and port names are
# DNS-1123 labels; env var names are C identifiers extended with '-' and '.' (1.7 allowed
# only C identifiers; we accept the wider 1.8+ set for forward compatibility).
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

# The volume sources a pod volume may carry (core/v1 VolumeSource, 1.7 set).
_VOLUME_SOURCES = frozenset(
    {
        "hostPath",
        "emptyDir",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "secret",
        "nfs",
        "iscsi",
        "glusterfs",
        "persistentVolumeClaim",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "downwardAPI",
        "fc",
        "azureFile",
        "configMap",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "projected",
        "portworxVolume",
        "scaleIO",
        "storageos",
    }
)
_CONTAINER_FIELDS = frozenset(
    {
        "name",
        "image",
        "command",
        "args",
        "workingDir",
        "ports",
        "envFrom",
        "env",
        "resources",
        "volumeMounts",
        "livenessProbe",
        "readinessProbe",
        "lifecycle",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "imagePullPolicy",
        "securityContext",
        "stdin",
        "stdinOnce",
        "tty",
    }
)
_MOUNT_FIELDS = frozenset({"name", "readOnly", "mountPath", "subPath"})
_ENV_FIELDS = frozenset({"name", "value", "valueFrom"})

# Top-level keys, lower-cased -> canonical (ghodss/yaml + encoding/json match case-insensitively).
_TOP_KEYS = {"containers": "containers", "volumes": "volumes", "volumemounts": "volumeMounts", "envvars": "envVars"}


class ConfigError(ValueError):
    """The injection config cannot be used; the message says where and why."""


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a key given twice in one mapping.

    Plain PyYAML keeps the last value silently, so a second ``volumeMounts:`` section (or a second
    ``image:`` in one container) would drop the first one's mounts without a word.
    """


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` merges are allowed to be overridden by explicit keys
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node)
        except TypeError:
            continue  # an unhashable key: construct_mapping reports it
        if first is not key_node:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


@dataclass(frozen=True)
class InjectionConfig:
    """A validated injection config. The lists hold plain JSON-like dicts in API field names.

    Instances are immutable by convention: ``apply_injection`` deep-copies what it injects, so one
    config object can be shared by all workers while a reload swaps in a new one atomically.
    """

    containers: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    env_vars: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        """Short stable hash of the content, logged on reload so operators can tell versions apart."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {
            "containers": copy.deepcopy(self.containers),
            "volumes": copy.deepcopy(self.volumes),
            "volumeMounts": copy.deepcopy(self.volume_mounts),
            "envVars": copy.deepcopy(self.env_vars),
        }


def _require_list(value: Any, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{path}: must be a list, got {type(value).__name__}")
    return value


def _require_mapping(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: must be a mapping, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(f"{path}: keys must be strings, got {k!r}")
    return value


def _check_unknown(obj: dict, allowed: frozenset, path: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}")


def _check_name(obj: dict, path: str, pattern: re.Pattern, what: str) -> str:
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}.name: required (a non-empty string)")
    if not pattern.match(name) or len(name) > 63 and pattern is _DNS1123_LABEL:
        raise ConfigError(f"{path}.name: {name!r} is not a valid {what}")
    return name


def _check_str(obj: dict, key: str, path: str, *, required: bool = False) -> None:
    if key not in obj or obj[key] is None:
        if required:
            raise ConfigError(f"{path}.{key}: required")
        return
    if not isinstance(obj[key], str):
        raise ConfigError(f"{path}.{key}: must be a string, got {type(obj[key]).__name__}")


def _check_bool(obj: dict, key: str, path: str) -> None:
    if key in obj and obj[key] is not None and not isinstance(obj[key], bool):
        raise ConfigError(f"{path}.{key}: must be a boolean, got {type(obj[key]).__name__}")


def _check_str_list(obj: dict, key: str, path: str) -> None:
    if key in obj and obj[key] is not None:
        items = _require_list(obj[key], f"{path}.{key}")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ConfigError(f"{path}.{key}[{i}]: must be a string, got {type(item).__name__}")


def _validate_env(env: Any, path: str) -> None:
    env = _require_mapping(env, path)
    _check_unknown(env, _ENV_FIELDS, path)
    _check_name(env, path, _ENV_NAME, "environment variable name")
    if "value" in env and env["value"] is not None and not isinstance(env["value"], str):
        # The API field is a string; a YAML `value: 8080` or `value: true` would be rejected by the
        # server at write time, failing every create. Say it here instead.
        raise ConfigError(f"{path}.value: must be a string (quote it), got {type(env['value']).__name__}")
    if env.get("value") not in (None, "") and env.get("valueFrom") is not None:
        raise ConfigError(f"{path}: value and valueFrom are mutually exclusive")
    if env.get("valueFrom") is not None:
        _require_mapping(env["valueFrom"], f"{path}.valueFrom")


def _validate_mount(mount: Any, path: str) -> None:
    mount = _require_mapping(mount, path)
    _check_unknown(mount, _MOUNT_FIELDS, path)
    _check_name(mount, path, _DNS1123_LABEL, "volume name (DNS-1123 label)")
    _check_str(mount, "mountPath", path, required=True)
    if not mount["mountPath"]:
        raise ConfigError(f"{path}.mountPath: must not be empty")
    _check_str(mount, "subPath", path)
    _check_bool(mount, "readOnly", path)


def _validate_container(c: Any, path: str) -> None:
    c = _require_mapping(c, path)
    _check_unknown(c, _CONTAINER_FIELDS, path)
    _check_name(c, path, _DNS1123_LABEL, "container name (DNS-1123 label)")
    _check_str(c, "image", path, required=True)
    for key in ("workingDir", "imagePullPolicy", "terminationMessagePath", "terminationMessagePolicy"):
        _check_str(c, key, path)
    if c.get("imagePullPolicy") not in (None, "Always", "IfNotPresent", "Never"):
        raise ConfigError(f"{path}.imagePullPolicy: must be Always, IfNotPresent or Never, got {c['imagePullPolicy']!r}")
    _check_str_list(c, "command", path)
    _check_str_list(c, "args", path)
    for key in ("stdin", "stdinOnce", "tty"):
        _check_bool(c, key, path)
    for key in ("resources", "securityContext", "livenessProbe", "readinessProbe", "lifecycle"):
        if c.get(key) is not None:
            _require_mapping(c[key], f"{path}.{key}")
    seen: set[str] = set()
    for i, env in enumerate(_require_list(c.get("env"), f"{path}.env")):
        _validate_env(env, f"{path}.env[{i}]")
        if env["name"] in seen:
            raise ConfigError(f"{path}.env[{i}].name: duplicate {env['name']!r}")
        seen.add(env["name"])
    for i, mount in enumerate(_require_list(c.get("volumeMounts"), f"{path}.volumeMounts")):
        _validate_mount(mount, f"{path}.volumeMounts[{i}]")
    for i, p in enumerate(_require_list(c.get("ports"), f"{path}.ports")):
        _require_mapping(p, f"{path}.ports[{i}]")
    for i, p in enumerate(_require_list(c.get("envFrom"), f"{path}.envFrom")):
        _require_mapping(p, f"{path}.envFrom[{i}]")


def _validate_volume(v: Any, path: str) -> None:
    v = _require_mapping(v, path)
    _check_name(v, path, _DNS1123_LABEL, "volume name (DNS-1123 label)")
    _check_unknown(v, _VOLUME_SOURCES | {"name"}, path)
    sources = [k for k in v if k != "name" and v[k] is not None]
    if len(sources) != 1:
        raise ConfigError(f"{path}: must have exactly one volume source (e.g. configMap, secret, emptyDir), got {len(sources)}")
    _require_mapping(v[sources[0]], f"{path}.{sources[0]}")


def validate_config(data: Any) -> InjectionConfig:
    """Validate a decoded config document (a mapping) and return the ``InjectionConfig``."""
    if data is None:
        raise ConfigError("config is empty: expected a mapping with containers, volumes, volumeMounts, envVars")
    data = _require_mapping(data, "config")
    parts: dict[str, Any] = {}
    for key, value in data.items():
        canon = _TOP_KEYS.get(key.lower())
        if canon is None:
            raise ConfigError(f"config: unknown key {key!r} (expected containers, volumes, volumeMounts, envVars)")
        if canon in parts:
            raise ConfigError(f"config: key {key!r} given twice (keys match case-insensitively)")
        parts[canon] = _require_list(value, canon)
    if not parts:
        raise ConfigError("config is empty: expected a mapping with containers, volumes, volumeMounts, envVars")

    containers = _validate_items(parts, "containers", _validate_container, "name", "duplicate container name")
    volumes = _validate_items(parts, "volumes", _validate_volume, "name", "duplicate volume name")
    # Several mounts may share a volume (the original mounts ca-certs-debian twice), but a
    # container cannot mount two things at one path.
    mounts = _validate_items(parts, "volumeMounts", _validate_mount, "mountPath", "duplicate mount path")
    env_vars = _validate_items(parts, "envVars", _validate_env, "name", "duplicate environment variable")

    return InjectionConfig(
        containers=copy.deepcopy(containers),
        volumes=copy.deepcopy(volumes),
        volume_mounts=copy.deepcopy(mounts),
        env_vars=copy.deepcopy(env_vars),
    )


def _validate_items(parts: dict, section: str, validate, key: str, duplicate: str) -> list:
    """Validate each item of ``parts[section]`` and refuse two items with the same ``key``."""
    items = parts.get(section, [])
    seen: set[str] = set()
    for i, item in enumerate(items):
        validate(item, f"{section}[{i}]")
        if item[key] in seen:
            raise ConfigError(f"{section}[{i}].{key}: {duplicate} {item[key]!r}")
        seen.add(item[key])
    return items


def parse_config(text: str) -> InjectionConfig:
    """Parse the ConfigMap's ``config`` value (YAML or JSON) into a validated ``InjectionConfig``.

    Raises ``ConfigError`` with a message naming the problem; never returns a partial config.
    """
    if not isinstance(text, str):
        raise ConfigError(f"config must be a string, got {type(text).__name__}")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config is not valid YAML/JSON{where}: {problem}") from None
    except RecursionError:
        raise ConfigError("config is nested too deeply to parse") from None
    try:
        return validate_config(data)
    except RecursionError:  # e.g. a recursive YAML alias (&a [*a])
        raise ConfigError("config is nested too deeply (or refers to itself through a YAML alias)") from None


def config_from_configmap(cm: dict[str, Any]) -> InjectionConfig:
    """Extract and parse the ``config`` key of a ConfigMap object (as returned by the API)."""
    meta = cm.get("metadata") or {}
    ref = f"ConfigMap {meta.get('namespace', '?')}/{meta.get('name', '?')}"
    data = cm.get("data") or {}
    if CONFIG_KEY not in data:
        raise ConfigError(f"{ref} has no {CONFIG_KEY!r} key (keys: {', '.join(sorted(data)) or 'none'})")
    try:
        return parse_config(data[CONFIG_KEY])
    except ConfigError as exc:
        raise ConfigError(f"{ref}: {exc}") from None
