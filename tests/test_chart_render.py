"""The Helm chart as rendered by the real Helm binary: lint, every flag combination valid against the
Kubernetes 1.8.0 and 1.13.0 schemas (strict), and the wiring between the components."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import yaml

from chart_helpers import CHART, K17, container, find, helm, one, render, render_notes, set_args, validate_strict

# kubernetes-validate 1.13.0 uses distutils, pkg_resources and jsonschema's RefResolver (deprecated,
# still working; setup.cfg pins setuptools < 81, which still ships pkg_resources).
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning"),
]

RELEASE_NS = "tproxy-system"
FULL = "tproxy-tproxy"  # "<release>-<chart>" for release "tproxy"
ALL_ON = {"tproxy.useInitializer": True, "tproxy.useRBAC": True}
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

COMBOS = [
    {
        "tproxy.useInitializer": ui,
        "tproxy.useRBAC": rb,
        "tproxy.addStandardModeProxy": sm,
        **({"tproxy.blockSvcCIDR": "10.11.240.0/20", "tproxy.allowDNS": "10.11.240.10"} if net else {}),
    }
    for ui, rb, sm, net in itertools.product([False, True], repeat=4)
]


def combo_id(values: dict) -> str:
    short = {
        "tproxy.useInitializer": "init",
        "tproxy.useRBAC": "rbac",
        "tproxy.addStandardModeProxy": "std",
        "tproxy.blockSvcCIDR": "net",
    }
    return "-".join(s for k, s in short.items() if values.get(k)) or "defaults-off"


@pytest.fixture(scope="module")
def all_on() -> list[dict]:
    return render(ALL_ON)


# ---- lint and schema ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values", [{}, ALL_ON, {**ALL_ON, "tproxy.addStandardModeProxy": True}], ids=["defaults", "init-rbac", "init-rbac-std"]
)
def test_helm_lint_passes(values):
    proc = helm("lint", str(CHART), *set_args(values))
    assert "0 chart(s) failed" in proc.stdout
    assert "[ERROR]" not in proc.stdout


@pytest.fixture(scope="module")
def given_ca_args(tmp_path_factory) -> list[str]:
    """One CA for every combination, so that objects which do not depend on the flags render
    identically and are validated once (a generated CA differs on every render; the defaults
    test below validates the generated one)."""
    import trustme

    d = tmp_path_factory.mktemp("ca")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.crt"))
    ca.private_key_pem.write_to_path(str(d / "ca.key"))
    return ["--set-file", f"tproxy.ca.cert={d / 'ca.crt'}", "--set-file", f"tproxy.ca.key={d / 'ca.key'}"]


@pytest.mark.parametrize("values", COMBOS, ids=[combo_id(c) for c in COMBOS])
def test_every_combination_is_valid_for_1_8_and_1_13(values, given_ca_args):
    """Rendered for 1.13, valid for 1.13; rendered for 1.7, valid for 1.8 (the oldest schemas) and
    1.13 (which still serves extensions/v1beta1 and rbac v1beta1)."""
    objs = render(values, *given_ca_args)
    kinds = {o["kind"] for o in objs}
    assert {"DaemonSet", "Secret", "ConfigMap"} <= kinds
    assert ("InitializerConfiguration" in kinds) == values["tproxy.useInitializer"]
    assert bool(kinds & RBAC_KINDS) == values["tproxy.useRBAC"]
    for obj in objs:
        validate_strict(obj, "1.13.0")
    for obj in render(values, *given_ca_args, *K17):
        validate_strict(obj, "1.8.0")
        validate_strict(obj, "1.13.0")


@pytest.mark.parametrize("values", COMBOS, ids=[combo_id(c) for c in COMBOS])
def test_every_combination_rendered_for_1_7_is_valid_for_1_7(values, given_ca_args):
    """Rendered for a 1.7 server (what `helm install` does against one), strictly valid for 1.7.0:
    no field a 1.7 server's validation refuses (allowPrivilegeEscalation came in 1.8)."""
    objs = render(values, *given_ca_args, "--kube-version", "1.7.0")
    for obj in objs:
        validate_strict(obj, "1.7.0")


def test_strict_1_7_validation_refuses_the_1_8_field(all_on):
    ds = copy.deepcopy(one(all_on, "DaemonSet"))  # rendered for 1.13: carries allowPrivilegeEscalation
    ds["apiVersion"] = "extensions/v1beta1"  # the version 1.7 serves, so only the field differs
    assert "allowPrivilegeEscalation" in json.dumps(ds)
    with pytest.raises(AssertionError, match="invalid for Kubernetes 1.7.0 .*allowPrivilegeEscalation"):
        validate_strict(ds, "1.7.0")


def test_default_values_render_and_validate():
    objs = render()
    for obj in objs:
        validate_strict(obj, "1.13.0")
    for obj in render(None, *K17):
        validate_strict(obj, "1.8.0")
    # The original chart's defaults: no initializer, no RBAC.
    assert not find(objs, "Deployment") and not find(objs, "InitializerConfiguration")
    assert not [o for o in objs if o["kind"] in RBAC_KINDS]
    assert "serviceAccountName" not in one(objs, "DaemonSet")["spec"]["template"]["spec"]


def test_strict_validation_refuses_unknown_fields_and_wrong_types(all_on):
    """validate_strict must really be strict (an unknown field would pass a non-strict schema) and
    say where the object is wrong."""
    ds = one(render(ALL_ON, *K17), "DaemonSet")  # extensions/v1beta1: a kind 1.8 and 1.13 both have
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    wrong_type = copy.deepcopy(ds)
    wrong_type["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    for version in ("1.8.0", "1.13.0"):
        validate_strict(ds, version)
        with pytest.raises(
            AssertionError,
            match=f"DaemonSet {FULL} is invalid for Kubernetes {version} at spec/template/spec/containers/0: .*imagePullPolicyy",
        ):
            validate_strict(bad, version)
        with pytest.raises(AssertionError, match=f"invalid for Kubernetes {version} at spec/template/spec/hostNetwork"):
            validate_strict(wrong_type, version)


# ---- install order and the initializer's own Deployment -------------------------------------


def test_initializer_configuration_is_installed_last(all_on):
    # `helm template` prints in Helm's install order (releaseutil.InstallOrder; unknown kinds such
    # as InitializerConfiguration last). So the initializer's Deployment exists before the
    # configuration that would otherwise hold its own create pending (docs/initializers-1.7.md §9).
    kinds = [o["kind"] for o in all_on]
    assert kinds[-1] == "InitializerConfiguration"
    assert kinds.count("InitializerConfiguration") == 1
    assert kinds.index("Deployment") < kinds.index("InitializerConfiguration")
    for kind in ("ConfigMap", "ClusterRoleBinding", "RoleBinding", "ServiceAccount"):
        assert kinds.index(kind) < kinds.index("Deployment"), kind


def test_no_object_carries_initializers_or_pending(all_on):
    # `pending: []` is refused (422) when the plugin is off and breaks a later apply (§9).
    text = json.dumps(all_on)
    assert '"initializers": {' not in text and '"pending"' not in text
    for obj in all_on:
        assert "initializers" not in obj["metadata"]


def test_initializer_configuration_matches_deployments_with_one_rule(all_on):
    ic = one(all_on, "InitializerConfiguration")
    assert ic["apiVersion"] == "admissionregistration.k8s.io/v1alpha1"
    assert "namespace" not in ic["metadata"]  # cluster-scoped
    assert len(ic["metadata"]["name"].split(".")) >= 3
    [entry] = ic["initializers"]
    assert entry["name"] == "tproxy.initializer.kubernetes.io"
    # One rule: the plugin ANDs rules, so a second one would narrow the match.
    assert entry["rules"] == [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["deployments"]}]


# ---- the initializer ------------------------------------------------------------------------


def test_initializer_deployment_args_probes_and_namespace(all_on):
    dep = one(all_on, "Deployment", f"{FULL}-initializer", "kube-system")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{FULL}-initializer"
    c = container(pod, "tproxy-initializer")
    assert c["image"] == "tproxy-initializer:0.1.0"
    assert "command" not in c  # the image's ENTRYPOINT: python3 -m initializer
    assert c["args"] == [
        "-annotation=initializer.kubernetes.io/tproxy",
        "-require-annotation=true",
        "-initializer-name=tproxy.initializer.kubernetes.io",
        "-namespace=kube-system",
        f"-configmap={FULL}-initializer",
        "--metrics-port=9180",
        "--workers=2",
        f"--root-certs-configmap={FULL}-root-certs",
        f"--root-certs-namespace={RELEASE_NS}",
        "--exclude-namespaces=kube-system",
    ]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9180}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9180}
    # The ConfigMap the args name exists where the args say.
    one(all_on, "ConfigMap", f"{FULL}-initializer", "kube-system")


def test_initializer_values_are_honoured():
    objs = render(
        {
            **ALL_ON,
            "tproxy.initializer.namespace": "tproxy-ctl",
            "tproxy.initializer.replicas": 3,
            "tproxy.initializer.excludeNamespaces": ["kube-system", "kube-public"],
            "tproxy.initializer.workers": 4,
        }
    )
    dep = one(objs, "Deployment", namespace="tproxy-ctl")
    args = container(dep["spec"]["template"]["spec"], "tproxy-initializer")["args"]
    assert dep["spec"]["replicas"] == 3
    assert "-namespace=tproxy-ctl" in args and "--workers=4" in args
    assert "--exclude-namespaces=kube-system,kube-public" in args
    one(objs, "ConfigMap", f"{FULL}-initializer", "tproxy-ctl")
    one(objs, "Role", namespace="tproxy-ctl")
    none = render({**ALL_ON, "tproxy.initializer.excludeNamespaces": []})
    args = container(one(none, "Deployment")["spec"]["template"]["spec"], "tproxy-initializer")["args"]
    assert not [a for a in args if a.startswith("--exclude-namespaces")]
    # The command-line way to empty a list, --set 'x={}', gives [""]: accepted and skipped.
    none = render(ALL_ON, "--set", "tproxy.initializer.excludeNamespaces={}", "--set", "tproxy.rootCertsNamespaces={}")
    args = container(one(none, "Deployment")["spec"]["template"]["spec"], "tproxy-initializer")["args"]
    assert not [a for a in args if a.startswith("--exclude-namespaces")]
    assert [c["metadata"]["namespace"] for c in find(none, "ConfigMap", f"{FULL}-root-certs")] == [RELEASE_NS]


def _injection(objs):
    cm = one(objs, "ConfigMap", namespace="kube-system")
    return yaml.safe_load(cm["data"]["config"]), cm["data"]["config"]


def test_injection_config_parses_with_the_initializers_parser(all_on):
    from initializer.config import parse_config

    raw, text = _injection(all_on)
    cfg = parse_config(text)
    [sidecar] = cfg.containers
    assert sidecar["name"] == "tproxy" and sidecar["image"] == "tproxy-sidecar:0.1.0"
    assert sidecar["securityContext"] == {"privileged": True}
    assert {e["name"]: e.get("value") for e in sidecar["env"]} == {"TPROXY_VERIFY_TIMEOUT": "60"}
    assert [v["name"] for v in cfg.volumes] == ["ca-certs-fedora", "ca-certs-debian"]
    for v in cfg.volumes:
        assert v["configMap"]["name"] == f"{FULL}-root-certs"
    assert {(m["name"], m["mountPath"]) for m in cfg.volume_mounts} == {
        ("ca-certs-fedora", "/etc/pki/tls/certs/"),
        ("ca-certs-debian", "/etc/ssl/certs/"),
        ("ca-certs-debian", "/usr/local/share/ca-certificates/extra/"),
    }
    items = {v["name"]: v["configMap"]["items"] for v in cfg.volumes}
    assert items["ca-certs-fedora"] == [{"key": "root-certs.crt", "path": "ca-bundle.crt"}]
    assert items["ca-certs-debian"] == [{"key": "root-certs.crt", "path": "ca-certificates.crt"}]
    assert cfg.env_vars == []
    assert set(raw) == {"containers", "volumes", "volumeMounts", "envVars"}


def test_allow_dns_takes_what_the_sidecar_takes():
    """ALLOW_DNS: addresses separated by commas or spaces, or "any" (the original's any resolver)."""
    for value in ("any", "10.11.240.10, 2001:db8::53"):
        raw, _ = _injection(render(ALL_ON, "--set-json", f"tproxy.allowDNS={json.dumps(value)}"))
        env = {e["name"]: e.get("value") for e in raw["containers"][0]["env"]}
        assert env["ALLOW_DNS"] == value


def test_injection_config_carries_the_network_and_standard_proxy_settings():
    from initializer.config import parse_config

    objs = render(
        {
            **ALL_ON,
            "tproxy.addStandardModeProxy": True,
            "tproxy.blockSvcCIDR": "10.11.240.0/20",
            "tproxy.allowDNS": "10.11.240.10",
            "tproxy.verifyTimeout": 15,
        }
    )
    cfg = parse_config(_injection(objs)[1])
    env = {e["name"]: e for e in cfg.containers[0]["env"]}
    assert env["BLOCK_SVC_CIDR"]["value"] == "10.11.240.0/20"
    assert env["ALLOW_DNS"]["value"] == "10.11.240.10"
    assert env["TPROXY_VERIFY_TIMEOUT"]["value"] == "15"
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    app_env = {e["name"]: e for e in cfg.env_vars}
    assert app_env["http_proxy"]["value"] == "$(NODE_NAME):1080"
    assert app_env["https_proxy"]["value"] == "$(NODE_NAME):1080"
    assert list(app_env)[0] == "NODE_NAME"  # $(NODE_NAME) expands only from earlier entries


def test_sidecar_gets_no_node_name_without_the_standard_proxy(all_on):
    # NODE_NAME makes the lock allow <node>:1080; nothing listens there without the standard proxy.
    raw, _ = _injection(all_on)
    assert "NODE_NAME" not in {e["name"] for e in raw["containers"][0]["env"]}


# ---- the DaemonSet --------------------------------------------------------------------------


def test_daemonset_wires_podwatch_and_the_proxy_to_the_host_port():
    objs = render({**ALL_ON, "tproxy.hostPort": 9090})
    ds = one(objs, "DaemonSet", FULL, RELEASE_NS)
    assert ds["apiVersion"] == "apps/v1"
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["serviceAccountName"] == FULL
    assert [c["name"] for c in pod["containers"]] == ["tproxy-podwatch", "tproxy-tproxy-mode"]

    pw = container(pod, "tproxy-podwatch")
    assert pw["image"] == "tproxy-podwatch:0.1.0" and "command" not in pw
    assert pw["args"] == [
        "-annotation=initializer.kubernetes.io/tproxy",
        "-hostPort=9090",
        "--metrics-port=9181",
        "--identity-file=/var/run/tproxy/identity.json",
        "--iptables-backend=auto",
        "--proxy-ports-file=/var/run/tproxy-ports/ports",
    ]
    assert pw["env"] == [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    assert pw["securityContext"]["privileged"] is True
    assert pw["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9181}
    assert pw["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9181}
    assert {"containerPort": 9181, "hostPort": 9181} in [{k: p[k] for k in ("containerPort", "hostPort")} for p in pw["ports"]]

    px = container(pod, "tproxy-tproxy-mode")
    assert px["image"] == "tproxy-proxy:0.1.0"
    cmd = px["command"]
    # the worker supervisor (proxy/workers.py), then each worker's mitmdump options
    assert cmd[:9] == [
        "python3",
        "-m",
        "proxy.workers",
        "--workers=auto",
        "--port=9090",
        "--metrics-port=9182",
        "--ports-file=/var/run/tproxy-ports/ports",
        "--",
        "--mode",
    ]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert sets == [
        "confdir=/etc/tproxy/mitmproxy",
        "tproxy_policy=/etc/tproxy/policy/policy.yaml",
        "tproxy_identity=/var/run/tproxy/identity.json",
        "connection_strategy=lazy",
        "stream_large_bodies=1m",
        "flow_detail=0",
        "termlog_verbosity=error",
    ]
    assert cmd[cmd.index("-s") + 1] == "/opt/tproxy/proxy/addon.py"
    assert "--proxy-ports-file=/var/run/tproxy-ports/ports" in pw["args"]
    assert {"containerPort": 9090, "hostPort": 9090} in [{k: p[k] for k in ("containerPort", "hostPort")} for p in px["ports"]]
    assert px["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9182}
    assert px["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9182}
    assert {"containerPort": 9182, "hostPort": 9182} in [{k: p[k] for k in ("containerPort", "hostPort")} for p in px["ports"]]

    # Volumes: the CA Secret as the read-only confdir, the policy, the identity map shared with podwatch.
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["mitmproxy-certs"]["secret"]["secretName"] == f"{FULL}-certs"
    assert vols["policy"]["configMap"]["name"] == f"{FULL}-policy"
    assert "emptyDir" in vols["identity"]
    px_mounts = {m["mountPath"]: m["name"] for m in px["volumeMounts"]}
    assert px_mounts == {
        "/etc/tproxy/mitmproxy": "mitmproxy-certs",
        "/etc/tproxy/policy": "policy",
        "/var/run/tproxy": "identity",
        "/var/run/tproxy-ports": "proxy-ports",
    }
    assert {m["mountPath"]: m["name"] for m in pw["volumeMounts"]} == {
        "/var/run/tproxy": "identity",
        "/var/run/tproxy-ports": "proxy-ports",
    }
    # the proxy writes its workers' port range, podwatch only reads it
    assert "emptyDir" in vols["proxy-ports"]
    assert [m.get("readOnly", False) for m in px["volumeMounts"] if m["name"] == "proxy-ports"] == [False]
    assert [m.get("readOnly", False) for m in pw["volumeMounts"] if m["name"] == "proxy-ports"] == [True]
    # The names the volumes refer to are rendered in the release namespace.
    one(objs, "Secret", f"{FULL}-certs", RELEASE_NS)
    one(objs, "ConfigMap", f"{FULL}-policy", RELEASE_NS)


def test_standard_mode_proxy_is_optional_and_listens_on_1080():
    objs = render({"tproxy.addStandardModeProxy": True})
    pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    std = container(pod, "tproxy-standard-mode")
    assert std["command"][:3] == ["mitmdump", "-p", "1080"]
    assert "--mode" not in std["command"]
    assert "tproxy_metrics_port=9183" in std["command"]
    assert "confdir=/etc/tproxy/mitmproxy" in std["command"]
    assert {"containerPort": 1080, "hostPort": 1080, "name": "standard", "protocol": "TCP"} in std["ports"]


def test_images_use_the_registry_prefix_and_the_mitmproxy_fallback():
    objs = render({**ALL_ON, "images.tproxy_registry": "gcr.io/acme/", "images.pullPolicy": "Always"})
    pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    assert container(pod, "tproxy-podwatch")["image"] == "gcr.io/acme/tproxy-podwatch:0.1.0"
    assert container(pod, "tproxy-tproxy-mode")["image"] == "gcr.io/acme/tproxy-proxy:0.1.0"
    assert {c["imagePullPolicy"] for c in pod["containers"]} == {"Always"}
    dep = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert container(dep, "tproxy-initializer")["image"] == "gcr.io/acme/tproxy-initializer:0.1.0"
    raw, _ = _injection(objs)
    assert raw["containers"][0]["image"] == "gcr.io/acme/tproxy-sidecar:0.1.0"
    # images.mitmproxy (original value) is used verbatim when the tproxy proxy image is emptied.
    objs = render({"images.tproxy_proxy": "", "images.mitmproxy": "registry.local/mitm-tproxy:11"})
    pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    assert container(pod, "tproxy-tproxy-mode")["image"] == "registry.local/mitm-tproxy:11"


# ---- policy ---------------------------------------------------------------------------------


def test_default_policy_is_the_tutorials_and_the_proxy_accepts_it():
    from proxy.policy import BUILTIN_POLICY, Policy

    text = one(render(), "ConfigMap", f"{FULL}-policy")["data"]["policy.yaml"]
    assert (
        yaml.safe_load(text)
        == BUILTIN_POLICY
        == {
            "mode": "enforce",
            "rules": [{"host": "storage.googleapis.com", "paths": ["/solutions-public-assets/"], "schemes": ["https"]}],
        }
    )
    policy = Policy.from_yaml(text, source="policy.yaml")
    allow = policy.decide(
        "storage.googleapis.com", method="GET", scheme="https", path="/solutions-public-assets/tproxy.png", namespace="default"
    )
    deny = policy.decide("www.google.com", method="GET", scheme="https", path="/", namespace="default")
    assert allow.allowed and not deny.allowed


def test_policy_from_a_file_is_used_verbatim(tmp_path):
    text = "# ours\nmode: report\nrules:\n  - host: '*.example.com'\n"
    (tmp_path / "p.yaml").write_text(text)
    objs = render(None, "--set-file", f"tproxy.policy={tmp_path / 'p.yaml'}")
    assert one(objs, "ConfigMap", f"{FULL}-policy")["data"]["policy.yaml"] == text


# ---- RBAC: least privilege ------------------------------------------------------------------


def _rules(objs, kind, name):
    return one(objs, kind, name)["rules"]


def test_rbac_grants_exactly_what_each_component_needs(all_on):
    assert _rules(all_on, "ClusterRole", f"{FULL}-initializer") == [
        {
            "apiGroups": ["apps", "extensions"],
            "resources": ["deployments"],
            "verbs": ["get", "list", "watch", "update", "patch", "initialize"],
        },
        # The CA bundle's copy, by name in every namespace; create cannot be restricted by name.
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [f"{FULL}-root-certs"], "verbs": ["get", "update"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    ]
    assert _rules(all_on, "Role", f"{FULL}-initializer-config") == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [f"{FULL}-initializer"], "verbs": ["get", "watch"]}
    ]
    assert one(all_on, "Role", f"{FULL}-initializer-config")["metadata"]["namespace"] == "kube-system"
    # The source of the copies, read and watched by name where the chart creates it.
    assert _rules(all_on, "Role", f"{FULL}-initializer-root-certs") == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [f"{FULL}-root-certs"], "verbs": ["get", "watch"]}
    ]
    assert one(all_on, "Role", f"{FULL}-initializer-root-certs")["metadata"]["namespace"] == RELEASE_NS
    assert _rules(all_on, "ClusterRole", f"{FULL}-podwatch") == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    # Nothing else is granted: no Secrets, no wildcards, no other roles.
    roles = find(all_on, "ClusterRole") + find(all_on, "Role")
    assert len(roles) == 4
    for role in roles:
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"] and "*" not in rule["verbs"]
            # Nobody lists, watches or deletes ConfigMaps as a collection (a list shows every one's data).
            if "configmaps" in rule["resources"] and not rule.get("resourceNames"):
                assert set(rule["verbs"]) <= {"create"}
            assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]


def test_bindings_point_at_the_service_accounts_the_pods_use(all_on):
    sas = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in find(all_on, "ServiceAccount")}
    assert sas == {("kube-system", f"{FULL}-initializer"), (RELEASE_NS, FULL)}
    roles = {(o["kind"], o["metadata"]["name"]) for o in find(all_on, "ClusterRole") + find(all_on, "Role")}
    for b in find(all_on, "ClusterRoleBinding") + find(all_on, "RoleBinding"):
        assert (b["roleRef"]["kind"], b["roleRef"]["name"]) in roles
        for s in b["subjects"]:
            assert (s["namespace"], s["name"]) in sas
        if b["kind"] == "RoleBinding":
            assert b["metadata"]["namespace"] == one(all_on, "Role", b["roleRef"]["name"])["metadata"]["namespace"]


def test_rbac_without_initializer_has_only_podwatch():
    objs = render({"tproxy.useRBAC": True})
    assert {(o["kind"], o["metadata"]["name"]) for o in objs if o["kind"] in RBAC_KINDS} == {
        ("ServiceAccount", FULL),
        ("ClusterRole", f"{FULL}-podwatch"),
        ("ClusterRoleBinding", f"{FULL}-podwatch"),
    }


# ---- root-certs ConfigMaps ------------------------------------------------------------------


def test_root_certs_are_copied_into_listed_namespaces():
    objs = render({"tproxy.rootCertsNamespaces": ["team-a", "team-b", RELEASE_NS, "team-a"]})
    cms = find(objs, "ConfigMap", f"{FULL}-root-certs")
    assert sorted(c["metadata"]["namespace"] for c in cms) == sorted([RELEASE_NS, "team-a", "team-b"])
    bundles = {c["data"]["root-certs.crt"] for c in cms}
    assert len(bundles) == 1, "every copy must hold the same CA"
    # The listed copies are marked as copies of the release namespace's source, so an initializer
    # keeps them current instead of refusing them as someone else's ConfigMap; the source is not.
    from initializer.rootcerts import COPY_OF_ANNOTATION

    for cm in cms:
        ann = cm["metadata"].get("annotations") or {}
        if cm["metadata"]["namespace"] == RELEASE_NS:
            assert COPY_OF_ANNOTATION not in ann
        else:
            assert ann[COPY_OF_ANNOTATION] == f"{RELEASE_NS}/{FULL}-root-certs"


def test_by_default_the_bundle_is_rendered_in_the_release_namespace_only(all_on):
    """The initializer copies it: no namespace list to keep up to date (issue 23)."""
    assert [c["metadata"]["namespace"] for c in find(all_on, "ConfigMap", f"{FULL}-root-certs")] == [RELEASE_NS]


# ---- NOTES.txt ------------------------------------------------------------------------------


def test_notes_with_initializer_name_the_annotation(tmp_path):
    notes = render_notes(ALL_ON, tmp_path)
    assert '"initializer.kubernetes.io/tproxy": "true"' in notes
    assert "initContainers" not in notes
    assert "in any namespace" in notes and f"{FULL}-root-certs in\n{RELEASE_NS}" in notes
    assert "will not start" not in notes


def test_notes_in_manual_mode_print_the_init_container(tmp_path):
    notes = render_notes(
        {
            "tproxy.allowDNS": "10.11.240.10",
            "tproxy.addStandardModeProxy": True,
            "tproxy.rootCertsNamespaces": ["team-b", "team-a"],
        },
        tmp_path,
    )
    assert '"initializer.kubernetes.io/tproxy": "true"' in notes  # podwatch still needs it
    assert f"{FULL}-root-certs exists in these namespaces only: {RELEASE_NS}, team-a, team-b" in notes
    block = notes[notes.index("initContainers:") : notes.index("Add the volumes")]
    [init] = yaml.safe_load(block)["initContainers"]
    assert init["name"] == "tproxy" and init["securityContext"] == {"privileged": True}
    assert {e["name"] for e in init["env"]} == {"ALLOW_DNS", "NODE_NAME", "TPROXY_VERIFY_TIMEOUT"}
    vols = yaml.safe_load(notes[notes.index("volumes:") : notes.index("and mount them")])["volumes"]
    assert vols[1]["configMap"]["name"] == f"{FULL}-root-certs"
    env = yaml.safe_load(notes[notes.index("env:\n- name: NODE_NAME") : notes.index("The proxy's CA")])["env"]
    assert [e["name"] for e in env] == ["NODE_NAME", "http_proxy", "https_proxy"]


def test_unprivileged_containers_run_as_non_root_unless_told_otherwise():
    def contexts(objs):
        ds = one(objs, "DaemonSet")["spec"]["template"]["spec"]
        dep = one(objs, "Deployment")["spec"]["template"]["spec"]
        return [
            container(ds, "tproxy-tproxy-mode")["securityContext"],
            container(ds, "tproxy-standard-mode")["securityContext"],
            container(dep, "tproxy-initializer")["securityContext"],
        ]

    values = {**ALL_ON, "tproxy.addStandardModeProxy": True}
    for sc in contexts(render(values)):
        assert sc == {"runAsUser": 65534, "runAsNonRoot": True, "allowPrivilegeEscalation": False}
    for sc in contexts(render({**values, "tproxy.runAsUser": 0})):
        assert sc == {"allowPrivilegeEscalation": False}
    # podwatch and the injected init container need privilege (iptables) and keep it.
    pod = one(render(values), "DaemonSet")["spec"]["template"]["spec"]
    assert container(pod, "tproxy-podwatch")["securityContext"] == {"privileged": True}


def test_manual_notes_print_exactly_what_the_initializer_would_inject(tmp_path):
    values = {"tproxy.blockSvcCIDR": "10.11.240.0/20", "tproxy.allowDNS": "10.11.240.10", "tproxy.addStandardModeProxy": True}
    notes = render_notes(values, tmp_path)
    manual = yaml.safe_load(notes[notes.index("initContainers:") : notes.index("Add the volumes")])["initContainers"]
    volumes = yaml.safe_load(notes[notes.index("volumes:") : notes.index("and mount them")])["volumes"]
    mounts = yaml.safe_load(notes[notes.index("volumeMounts:") : notes.index("Add the env vars")])["volumeMounts"]
    injected, _ = _injection(render({**values, **ALL_ON}))
    assert manual == injected["containers"]
    assert volumes == injected["volumes"]
    assert mounts == injected["volumeMounts"]


def test_long_release_names_keep_names_and_labels_within_limits():
    release = "r" * 53  # Helm's own limit for release names
    objs = render(ALL_ON, release=release)
    for obj in objs:
        name = obj["metadata"]["name"]
        limit = (
            253
            if obj["kind"]
            in ("InitializerConfiguration", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount")
            else 63
        )
        assert len(name) <= limit, f"{obj['kind']} name {name} is {len(name)} characters"
        for value in (obj["metadata"].get("labels") or {}).values():
            assert len(value) <= 63
    names = {o["metadata"]["name"] for o in objs if o["kind"] in ("ConfigMap", "Secret")}
    assert len(names) == 4, "truncation must not make two objects collide"
    raw, _ = _injection(objs)
    assert raw["volumes"][0]["configMap"]["name"] in names


# ---- the rendered commands are what the components accept -----------------------------------


def _mitmdump_args(command: list[str]):
    """Parse a rendered mitmdump command with mitmdump's own parser, the tproxy addon's options
    registered, and type-check every --set value (as mitmproxy would at start)."""
    import asyncio

    from mitmproxy import options
    from mitmproxy.addons.termlog import TermLog
    from mitmproxy.tools import cmdline
    from mitmproxy.tools.dump import DumpMaster

    from proxy.core import TproxyAddon

    async def parse():
        opts = options.Options()
        # mitmdump's own addons (the dumper's and the terminal log's options are set by the chart too)
        master = DumpMaster(opts, with_termlog=False)
        termlog = TermLog()
        master.addons.add(termlog, TproxyAddon())
        termlog.uninstall()  # (its log handler: not for this process)
        if command[:3] == ["python3", "-m", "proxy.workers"]:
            # the supervisor: worker 0's command (its port; the node's summed metrics port)
            from proxy.workers import check_worker_args, parse

            sup, worker = parse(command[3:])
            check_worker_args(worker)
            cmd = ["mitmdump", *worker, "--listen-port", str(sup.port), "--set", f"tproxy_metrics_port={sup.metrics_port}"]
        else:
            cmd = command
        assert cmd[0] == "mitmdump"
        args = cmdline.mitmdump(opts).parse_args(cmd[1:])
        values = {}
        for spec in args.setoptions:
            key, _, value = spec.partition("=")
            assert key in opts, f"mitmdump has no option {key!r}"
            values[key] = opts._parse_setval(opts._options[key], [value])
        return args, values

    return asyncio.run(parse())


def test_rendered_args_parse_with_each_components_own_cli():
    from initializer.__main__ import build_parser as initializer_parser
    from podwatch.__main__ import build_parser as podwatch_parser

    objs = render(
        {
            **ALL_ON,
            "tproxy.addStandardModeProxy": True,
            "tproxy.hostPort": 9090,
            "tproxy.initializer.excludeNamespaces": ["kube-system", "kube-public"],
            "tproxy.metrics.podwatchPort": 9281,
            "tproxy.metrics.proxyPort": 9282,
            "tproxy.metrics.standardProxyPort": 9283,
            "tproxy.metrics.initializerPort": 9280,
        }
    )
    dep = one(objs, "Deployment")
    init = initializer_parser().parse_args(container(dep["spec"]["template"]["spec"], "tproxy-initializer")["args"])
    cm = one(objs, "ConfigMap", f"{FULL}-initializer")
    assert (init.namespace, init.configmap) == (cm["metadata"]["namespace"], cm["metadata"]["name"])
    assert init.initializer_name == one(objs, "InitializerConfiguration")["initializers"][0]["name"]
    assert init.require_annotation is True and init.annotation == "initializer.kubernetes.io/tproxy"
    assert init.exclude_namespaces == ["kube-system", "kube-public"]
    assert init.metrics_port == 9280 and init.workers == 2

    pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    pw = podwatch_parser().parse_args(container(pod, "tproxy-podwatch")["args"])
    assert (pw.annotation, pw.host_port, pw.metrics_port) == ("initializer.kubernetes.io/tproxy", 9090, 9281)
    assert pw.identity_file == "/var/run/tproxy/identity.json"
    assert pw.iptables_backend == "auto"

    tp, tp_opts = _mitmdump_args(container(pod, "tproxy-tproxy-mode")["command"])
    assert tp.mode == ["transparent"] and tp.listen_port == 9090
    assert tp.scripts == ["/opt/tproxy/proxy/addon.py"]
    assert tp_opts["tproxy_metrics_port"] == 9282
    assert tp_opts["tproxy_identity"] == pw.identity_file
    std, std_opts = _mitmdump_args(container(pod, "tproxy-standard-mode")["command"])
    assert std.mode is None and std.listen_port == 1080 and std_opts["tproxy_metrics_port"] == 9283
    assert std_opts["confdir"] == tp_opts["confdir"] == "/etc/tproxy/mitmproxy"


def test_resources_values_reach_their_containers():
    objs = render({**ALL_ON, "tproxy.addStandardModeProxy": True})
    pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    default = {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}}
    assert container(pod, "tproxy-tproxy-mode")["resources"] == default
    assert container(pod, "tproxy-standard-mode")["resources"] == default
    small = {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "50m", "memory": "64Mi"}}
    objs = render(
        {
            **ALL_ON,
            "tproxy.addStandardModeProxy": True,
            "tproxy.resources": small,
            "tproxy.initializer.resources": {"requests": {"cpu": "10m"}},
        }
    )
    pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    assert container(pod, "tproxy-tproxy-mode")["resources"] == small
    assert container(pod, "tproxy-standard-mode")["resources"] == small
    # tproxy.resources is the mitmproxy containers' only (as in the original): podwatch keeps its own.
    assert container(pod, "tproxy-podwatch")["resources"]["limits"] == {"cpu": "500m", "memory": "128Mi"}
    init = container(one(objs, "Deployment")["spec"]["template"]["spec"], "tproxy-initializer")
    assert init["resources"]["requests"]["cpu"] == "10m"


def test_chart_is_apiversion_v1_for_helm_2_and_3():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v1" and chart["name"] == "tproxy"
    # apiVersion v2-only fields would be ignored by Helm 2 (dependencies belong in requirements.yaml).
    assert not {"type", "dependencies"} & set(chart)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "tproxy.useRbac=true"], "tproxy: Additional property useRbac is not allowed"),
        (["--set", "tproxy.hostPort=http"], "tproxy.hostPort: Invalid type. Expected: integer"),
        (["--set", "tproxy.hostPort=70000"], "tproxy.hostPort: Must be less than or equal to 65535"),
        (["--set", "tproxy.useInitializer=yes"], "tproxy.useInitializer: Invalid type. Expected: boolean"),
        (["--set", "tproxy.rootCertsNamespaces={Team_A}"], "tproxy.rootCertsNamespaces.0: Does not match pattern"),
        (["--set", "tproxy.blockSvcCIDR=everything"], "tproxy.blockSvcCIDR: Does not match pattern"),
        (["--set", "tproxy.allowDNS=kube-dns"], "tproxy.allowDNS: Does not match pattern"),
        (["--set", "images.pullPolicy=Sometimes"], "images.pullPolicy: images.pullPolicy must be one of"),
        (["--set", "tproxy.iptablesBackend=iptables"], "tproxy.iptablesBackend: tproxy.iptablesBackend must be one of"),
    ],
    ids=["typo", "port-type", "port-range", "bool", "namespace", "cidr", "dns", "pull-policy", "iptables-backend"],
)
def test_bad_values_stop_the_install_naming_the_value(args, message):
    """values.schema.json: Helm 3 refuses a misspelt key or a wrong type before rendering anything,
    instead of silently ignoring it or failing later at the API server (or in the pods)."""
    proc = helm("template", "tproxy", str(CHART), *args, check=False)
    assert proc.returncode != 0 and not proc.stdout
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_a_forced_iptables_backend_reaches_podwatch_and_the_injected_init_container():
    """One value, two components: podwatch on every node and the sidecar in every pod use the same
    backend when it is forced (auto is each one's default, so the sidecar gets no variable then)."""
    from controllerkit import iptables
    from initializer.config import parse_config
    from podwatch.__main__ import build_parser as podwatch_parser

    objs = render({**ALL_ON, "tproxy.iptablesBackend": "legacy"})
    pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    assert podwatch_parser().parse_args(container(pod, "tproxy-podwatch")["args"]).iptables_backend == "legacy"
    env = {e["name"]: e.get("value") for e in parse_config(_injection(objs)[1]).containers[0]["env"]}
    assert iptables.parse_setting(env[iptables.ENV]) == "legacy"


# ---- API versions per cluster version ----------------------------------------------------------


def test_api_versions_follow_the_cluster_version():
    """Rendered for 1.13 the chart uses what a 1.13 user expects (apps/v1, rbac v1); for 1.7 the
    versions 1.7 serves. The InitializerConfiguration is v1alpha1 in both."""

    def versions(objs):
        return {o["kind"]: o["apiVersion"] for o in objs}

    new, old = versions(render(ALL_ON)), versions(render(ALL_ON, *K17))
    assert (new["Deployment"], new["DaemonSet"]) == ("apps/v1", "apps/v1")
    assert {new[k] for k in RBAC_KINDS - {"ServiceAccount"}} == {"rbac.authorization.k8s.io/v1"}
    assert (old["Deployment"], old["DaemonSet"]) == ("extensions/v1beta1", "extensions/v1beta1")
    assert {old[k] for k in RBAC_KINDS - {"ServiceAccount"}} == {"rbac.authorization.k8s.io/v1beta1"}
    assert new["InitializerConfiguration"] == old["InitializerConfiguration"] == "admissionregistration.k8s.io/v1alpha1"
