"""initializer/config.py: the ConfigMap `config` schema (original tutorial's), validated."""

import json

import pytest

from initializer.config import ConfigError, InjectionConfig, config_from_configmap, parse_config

# The original chart's config (danisla/kubernetes-tproxy charts/tproxy/templates/initializer-configmap.yaml),
# rendered with addStandardModeProxy=true.
ORIGINAL = """
containers:
  - name: tproxy
    image: danisla/tproxy-sidecar:0.1.0
    imagePullPolicy: IfNotPresent
    securityContext:
      privileged: true
    env:
      - name: NODE_NAME
        valueFrom:
          fieldRef:
            fieldPath: spec.nodeName
    resources:
      limits: {cpu: 500m, memory: 128Mi}
volumes:
  - name: ca-certs-fedora
    configMap:
        name: tproxy-root-certs
        items: [{key: root-certs.crt, path: ca-bundle.crt}]
  - name: ca-certs-debian
    configMap:
        name: tproxy-root-certs
        items: [{key: root-certs.crt, path: ca-certificates.crt}]
volumeMounts:
  - name: ca-certs-fedora
    mountPath: /etc/pki/tls/certs/
  - name: ca-certs-debian
    mountPath: /etc/ssl/certs/
  - name: ca-certs-debian
    mountPath: /usr/local/share/ca-certificates/extra/
envVars:
  - name: http_proxy
    value: $(NODE_NAME):1080
"""


def test_original_chart_config_parses():
    cfg = parse_config(ORIGINAL)
    assert [c["name"] for c in cfg.containers] == ["tproxy"]
    assert [v["name"] for v in cfg.volumes] == ["ca-certs-fedora", "ca-certs-debian"]
    assert [m["mountPath"] for m in cfg.volume_mounts][2] == "/usr/local/share/ca-certificates/extra/"
    assert cfg.env_vars == [{"name": "http_proxy", "value": "$(NODE_NAME):1080"}]


def test_json_is_accepted_and_equal_to_yaml():
    import yaml

    as_json = json.dumps(yaml.safe_load(ORIGINAL))
    assert parse_config(as_json) == parse_config(ORIGINAL)
    assert parse_config(as_json).fingerprint == parse_config(ORIGINAL).fingerprint


def test_keys_match_case_insensitively_like_ghodss_yaml():
    cfg = parse_config("Containers: [{name: a, image: b}]\nVolumeMounts: []\nENVVARS: []")
    assert cfg.containers == [{"name": "a", "image": "b"}]


def test_empty_lists_and_null_sections_are_fine():
    cfg = parse_config("containers: [{name: a, image: b}]\nvolumes:\nenvVars: []")
    assert cfg.volumes == [] and cfg.env_vars == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "config is empty"),
        ("{}", "config is empty"),
        ("- a\n- b", "config: must be a mapping, got list"),
        ("containers: [", "not valid YAML/JSON at line"),
        ("volumeMount: []", "unknown key 'volumeMount'"),
        ("containers: {name: a}", "containers: must be a list, got dict"),
        ("containers: [{image: b}]", r"containers\[0\].name: required"),
        ("containers: [{name: A_b, image: b}]", "not a valid container name"),
        ("containers: [{name: a}]", r"containers\[0\].image: required"),
        ("containers: [{name: a, image: b, imagePullPolicy: Sometimes}]", "imagePullPolicy: must be Always"),
        ("containers: [{name: a, image: b, command: [1]}]", r"command\[0\]: must be a string"),
        ("containers: [{name: a, image: b, imagePullPolcy: Always}]", "unknown field.*imagePullPolcy"),
        ("containers: [{name: a, image: b}, {name: a, image: c}]", "duplicate container name 'a'"),
        ("containers: [{name: a, image: b, env: [{name: X, value: 8080}]}]", r"env\[0\].value: must be a string"),
        ("volumes: [{name: v}]", r"volumes\[0\]: must have exactly one volume source"),
        ("volumes: [{name: v, emptyDir: {}, secret: {secretName: s}}]", "exactly one volume source"),
        ("volumes: [{name: v, magicDisk: {}}]", "unknown field.*magicDisk"),
        ("volumes: [{name: v, emptyDir: {}}, {name: v, emptyDir: {}}]", "duplicate volume name 'v'"),
        ("volumeMounts: [{name: v}]", r"volumeMounts\[0\].mountPath: required"),
        ("volumeMounts: [{name: v, mountPath: /a}, {name: w, mountPath: /a}]", "duplicate mount path '/a'"),
        ("volumeMounts: [{name: v, mountPath: /a, readOnly: 'yes'}]", "readOnly: must be a boolean"),
        ("envVars: [{value: x}]", r"envVars\[0\].name: required"),
        ("envVars: [{name: '1 x', value: x}]", "not a valid environment variable name"),
        ("envVars: [{name: X, value: a}, {name: X, value: b}]", "duplicate environment variable 'X'"),
        ("envVars: [{name: X, value: a, valueFrom: {fieldRef: {fieldPath: x}}}]", "mutually exclusive"),
        ("containers: []\nContainers: []", "given twice"),
        # PyYAML alone keeps the last of two equal keys: the first section's mounts would vanish silently.
        (
            "volumeMounts: [{name: v, mountPath: /a}]\nvolumes: []\nvolumeMounts: [{name: v, mountPath: /b}]",
            r"line 3, column 1: found duplicate key 'volumeMounts' \(first at line 1\)",
        ),
        ("containers: [{name: a, image: b, image: c}]", "found duplicate key 'image'"),
        ('{"envVars": [], "envVars": []}', "found duplicate key 'envVars'"),
    ],
)
def test_bad_config_is_a_clear_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_yaml_merge_keys_may_be_overridden_by_explicit_keys():
    cfg = parse_config("containers:\n  - <<: {name: a, image: b}\n    image: c")
    assert cfg.containers == [{"name": "a", "image": "c"}]


def test_configmap_without_config_key_names_the_configmap():
    cm = {"metadata": {"namespace": "kube-system", "name": "tproxy-initializer"}, "data": {"conf": "x"}}
    with pytest.raises(ConfigError, match=r"ConfigMap kube-system/tproxy-initializer has no 'config' key \(keys: conf\)"):
        config_from_configmap(cm)


def test_configmap_error_is_prefixed_with_its_name():
    cm = {"metadata": {"namespace": "ns", "name": "cm"}, "data": {"config": "volumes: [{name: v}]"}}
    with pytest.raises(ConfigError, match=r"^ConfigMap ns/cm: volumes\[0\]"):
        config_from_configmap(cm)


def test_parsed_config_does_not_alias_the_input():
    cfg = config_from_configmap({"data": {"config": ORIGINAL}})
    assert isinstance(cfg, InjectionConfig)
    before = cfg.fingerprint
    cfg.to_dict()["containers"][0]["name"] = "changed"
    assert cfg.fingerprint == before
