"""The chart in webhook mode (issue 16), rendered by the real Helm binary: which mode the cluster's APIs
choose, the MutatingWebhookConfiguration per Kubernetes version, strict schema validation against
1.13-1.16, 1.22, 1.28 and the newest schemas the validator ships, the serving certificate (and that
`helm upgrade` against kubesim keeps it), cert-manager, monitoring, and bad values refused clearly."""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding

from chart_helpers import CHART, HELM, NEWEST, REPO, container, find, helm, one, render_notes, set_args, validate_strict

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning"),
]

NS = "tproxy-system"
KUBECTL = os.environ.get("TPROXY_KUBECTL", str(REPO / ".tools" / "bin" / "kubectl"))
WEBHOOK = "tproxy-tproxy-webhook"
TLS = "tproxy-tproxy-webhook-tls"
INITIALIZER_API = "admissionregistration.k8s.io/v1alpha1"
CRD_KINDS = {"Certificate", "Issuer", "ServiceMonitor"}  # no schema in the validator: checked below


def render_for(kube: str, values: dict | None = None, *extra: str, namespace: str = NS) -> list[dict]:
    """``helm template`` as for a cluster of version ``kube`` (Helm's built-in API list, which has no
    Initializers from 1.14 on), with ``values`` and extra flags."""
    text = helm(
        "template", "tproxy", str(CHART), "--namespace", namespace, "--kube-version", kube, *set_args(values), *extra
    ).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def render_fails(kube: str, values: dict | None = None, *extra: str) -> str:
    proc = helm(
        "template", "tproxy", str(CHART), "--namespace", NS, "--kube-version", kube, *set_args(values), *extra, check=False
    )
    assert proc.returncode != 0, f"expected the render to fail, got:\n{proc.stdout[:2000]}"
    return proc.stderr


def mwc(objs: list[dict]) -> dict:
    return one(objs, "MutatingWebhookConfiguration", WEBHOOK)


def hook(objs: list[dict]) -> dict:
    webhooks = mwc(objs)["webhooks"]
    assert len(webhooks) == 1
    return webhooks[0]


def initializer_args(objs: list[dict]) -> list[str]:
    dep = one(objs, "Deployment", "tproxy-tproxy-initializer")
    return container(dep["spec"]["template"]["spec"], "tproxy-initializer")["args"]


def mode(objs: list[dict]) -> str:
    kinds = {o["kind"] for o in objs}
    if "MutatingWebhookConfiguration" in kinds:
        assert "InitializerConfiguration" not in kinds
        assert initializer_args(objs)[0] == "webhook"
        return "webhook"
    if "InitializerConfiguration" in kinds:
        assert initializer_args(objs)[0] != "webhook"
        return "initializer"
    assert not find(objs, "Deployment"), "manual mode renders no initializer Deployment"
    return "manual"


# ---- which mode ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kube,extra,values,expected",
    [
        ("1.16.0", [], {}, "webhook"),
        ("1.22.0", [], {}, "webhook"),
        ("1.28.0", [], {}, "webhook"),
        (NEWEST, [], {}, "webhook"),
        # 1.26+ serves admissionregistration.k8s.io/v1alpha1 for ValidatingAdmissionPolicy when enabled:
        # that is not Initializers
        ("1.28.0", ["--api-versions", INITIALIZER_API], {}, "webhook"),
        # a live server's discovery names the kind
        ("1.28.0", ["--api-versions", f"{INITIALIZER_API}/InitializerConfiguration"], {}, "manual"),
        # 1.7-1.13 with the alpha API: the original's default (manual), or the Initializer when asked
        ("1.13.0", ["--api-versions", INITIALIZER_API], {}, "manual"),
        ("1.7.16", ["--api-versions", INITIALIZER_API], {"tproxy.useInitializer": True}, "initializer"),
        ("1.13.0", ["--api-versions", INITIALIZER_API], {"tproxy.useInitializer": True}, "initializer"),
        # explicit values win
        ("1.13.0", ["--api-versions", INITIALIZER_API], {"tproxy.useWebhook": True}, "webhook"),
        ("1.28.0", [], {"tproxy.useWebhook": False}, "manual"),
        ("1.28.0", ["--set", "tproxy.useWebhook=null"], {}, "webhook"),  # back to automatic
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_mode_follows_the_clusters_apis_unless_set(kube, extra, values, expected):
    assert mode(render_for(kube, values, *extra)) == expected


def test_both_modes_at_once_are_refused_with_the_reason():
    err = render_fails("1.13.0", {"tproxy.useWebhook": True, "tproxy.useInitializer": True}, "--api-versions", INITIALIZER_API)
    assert "tproxy.useWebhook=true and tproxy.useInitializer=true exclude each other" in err


def test_webhook_mode_on_a_cluster_without_admissionregistration_webhooks_is_refused():
    err = render_fails("1.8.0", {"tproxy.useWebhook": True})
    assert "needs admissionregistration.k8s.io/v1 (Kubernetes 1.16+) or v1beta1 (1.9-1.21)" in err
    assert "tproxy.useInitializer=true" in err


# ---- the MutatingWebhookConfiguration per version --------------------------------------------------

VERSIONS = [  # (render for, validate against, MutatingWebhookConfiguration apiVersion)
    ("1.13.0", "1.13.0", "admissionregistration.k8s.io/v1beta1"),
    ("1.14.0", "1.14.0", "admissionregistration.k8s.io/v1beta1"),
    ("1.15.0", "1.15.0", "admissionregistration.k8s.io/v1beta1"),
    ("1.16.0", "1.16.0", "admissionregistration.k8s.io/v1"),
    ("1.22.0", "1.22.0", "admissionregistration.k8s.io/v1"),
    ("1.28.0", "1.28.0", "admissionregistration.k8s.io/v1"),
    (NEWEST, NEWEST, "admissionregistration.k8s.io/v1"),
]
COMBOS = [
    {},
    {"tproxy.useRBAC": True},
    {
        "tproxy.useRBAC": True,
        "tproxy.addStandardModeProxy": True,
        "tproxy.monitoring.serviceMonitor.enabled": True,
        "tproxy.monitoring.grafanaDashboard.enabled": True,
    },
    {
        "tproxy.useRBAC": True,
        "tproxy.webhook.certManager.enabled": True,
        "tproxy.webhook.namespaceLabels": {"tproxy-injection": "enabled"},
    },
]
CRD_APIS = ["--api-versions", "cert-manager.io/v1", "--api-versions", "monitoring.coreos.com/v1"]


@pytest.mark.parametrize("combo", COMBOS, ids=["defaults", "rbac", "rbac-std-monitoring", "rbac-certmanager-labels"])
@pytest.mark.parametrize("kube,schema,api", VERSIONS, ids=[v[0] for v in VERSIONS])
def test_every_object_is_valid_for_its_version(kube, schema, api, combo):
    objs = render_for(kube, {"tproxy.useWebhook": True, **combo}, *CRD_APIS)
    assert mwc(objs)["apiVersion"] == api
    for obj in objs:
        if obj["kind"] not in CRD_KINDS:
            validate_strict(obj, schema)
    # What a version no longer serves is never rendered for it.
    served_apis = {o["apiVersion"] for o in objs}
    assert not served_apis & {"extensions/v1beta1", "rbac.authorization.k8s.io/v1beta1", "policy/v1beta1"}
    assert not find(objs, "PodSecurityPolicy")
    if combo.get("tproxy.webhook.certManager.enabled"):
        assert {o["kind"] for o in objs if o["kind"] in CRD_KINDS} == {"Certificate", "Issuer"}
    if combo.get("tproxy.monitoring.serviceMonitor.enabled"):
        assert find(objs, "ServiceMonitor")


def test_the_newer_fields_appear_from_the_version_that_has_them():
    by_version = {kube: hook(render_for(kube, {"tproxy.useWebhook": True})) for kube in ("1.13.0", "1.14.0", "1.15.0")}
    assert "timeoutSeconds" not in by_version["1.13.0"] and "admissionReviewVersions" not in by_version["1.13.0"]
    assert "port" not in by_version["1.14.0"]["clientConfig"]["service"]
    assert by_version["1.14.0"]["timeoutSeconds"] == 10 and "matchPolicy" not in by_version["1.14.0"]
    assert by_version["1.15.0"]["matchPolicy"] == "Equivalent"
    assert by_version["1.15.0"]["reinvocationPolicy"] == "IfNeeded"
    assert by_version["1.15.0"]["clientConfig"]["service"]["port"] == 443


def test_the_webhook_fails_closed_and_matches_what_the_webhook_mutates():
    objs = render_for("1.28.0", {"tproxy.webhook.timeoutSeconds": 7, "tproxy.webhook.reinvocationPolicy": "Never"})
    h = hook(objs)
    assert h["name"] == "tproxy.initializer.kubernetes.io"
    assert h["failurePolicy"] == "Fail" and h["sideEffects"] == "None"
    assert h["admissionReviewVersions"] == ["v1", "v1beta1"]
    assert h["timeoutSeconds"] == 7 and h["reinvocationPolicy"] == "Never" and h["matchPolicy"] == "Equivalent"
    assert h["clientConfig"]["service"] == {"name": WEBHOOK, "namespace": "kube-system", "path": "/mutate", "port": 443}
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r for r in h["rules"]}
    assert set(rules) == {(("apps", "extensions"), ("deployments",)), (("",), ("pods",))}
    assert rules[("apps", "extensions"), ("deployments",)]["operations"] == ["CREATE", "UPDATE"]
    assert rules[("",), ("pods",)]["operations"] == ["CREATE"]
    assert all(r["scope"] == "Namespaced" for r in h["rules"])
    assert "objectSelector" not in h
    # The path and the kinds are the webhook's own (initializer/webhook.py, admission.py).
    from initializer.admission import DEPLOYMENT_GROUPS
    from initializer.webhook import DEFAULT_PATH

    assert h["clientConfig"]["service"]["path"] == DEFAULT_PATH
    assert tuple(h["rules"][0]["apiGroups"]) == DEPLOYMENT_GROUPS


def test_the_namespace_selector_keeps_out_the_release_the_webhooks_own_namespace_and_kube_system():
    objs = render_for(
        "1.28.0",
        {
            "tproxy.initializer.namespace": "tproxy-hooks",
            "tproxy.initializer.excludeNamespaces": ["kube-system", "infra", ""],
            "tproxy.webhook.namespaceLabels": {"tproxy-injection": "enabled"},
        },
        namespace="tproxy-data",
    )
    sel = hook(objs)["namespaceSelector"]
    assert sel["matchLabels"] == {"tproxy-injection": "enabled"}
    assert sel["matchExpressions"] == [
        {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["infra", "kube-system", "tproxy-data", "tproxy-hooks"],
        }
    ]
    assert one(objs, "Service", WEBHOOK)["metadata"]["namespace"] == "tproxy-hooks"
    # the webhook skips the same namespaces itself (a second line when the label is missing)
    assert "--exclude-namespaces=kube-system,infra" in initializer_args(objs)


def test_an_object_selector_is_passed_on_from_1_15_and_refused_before():
    sel = {"matchExpressions": [{"key": "tproxy.io/skip", "operator": "DoesNotExist"}]}
    assert hook(render_for("1.15.0", {"tproxy.useWebhook": True, "tproxy.webhook.objectSelector": sel}))["objectSelector"] == sel
    err = render_fails("1.14.0", {"tproxy.useWebhook": True, "tproxy.webhook.objectSelector": sel})
    assert "tproxy.webhook.objectSelector needs Kubernetes 1.15 or later" in err


def test_helm_creates_the_configuration_after_the_webhooks_deployment_and_service():
    """`helm template` prints in Helm's install order (uninstall is the reverse)."""
    order = [o["kind"] for o in render_for("1.28.0", {"tproxy.useRBAC": True})]
    assert order[-1] == "MutatingWebhookConfiguration"
    assert order.index("Deployment") < order.index("MutatingWebhookConfiguration")
    assert order.index("Service") < order.index("MutatingWebhookConfiguration")


def test_notes_in_webhook_mode_say_what_is_excluded_and_how_to_label_before_1_21(tmp_path):
    notes = render_notes({"tproxy.useWebhook": True}, tmp_path)  # rendered for 1.13
    assert "Webhook mode: the mutating admission webhook tproxy-tproxy-webhook" in notes
    assert "admissionregistration.k8s.io/v1beta1, failurePolicy Fail" in notes
    assert "Never sent: kube-system, tproxy-system" in notes
    assert "kubectl label namespace kube-system kubernetes.io/metadata.name=kube-system --overwrite" in notes
    assert "Serving certificate (generated)" in notes
    assert "Add the init container spec below" not in notes


# ---- the Deployment, Service and RBAC ---------------------------------------------------------------


def test_the_deployment_runs_the_webhook_subcommand_with_flags_it_accepts():
    from initializer.__main__ import build_webhook_parser

    objs = render_for("1.28.0", {"tproxy.useRBAC": True})
    dep = one(objs, "Deployment", "tproxy-tproxy-initializer", "kube-system")
    spec = dep["spec"]["template"]["spec"]
    c = container(spec, "tproxy-initializer")
    assert c["args"][0] == "webhook"
    args = build_webhook_parser().parse_args(c["args"][1:])  # the real parser: every flag exists
    assert (args.tls_cert_file, args.tls_private_key_file) == (
        "/etc/tproxy/webhook-tls/tls.crt",
        "/etc/tproxy/webhook-tls/tls.key",
    )
    assert args.port == 8443 and args.require_annotation is True
    assert args.root_certs_configmap == "tproxy-tproxy-root-certs" and args.root_certs_namespace == NS
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9180, "webhook": 8443}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9180}
    assert c["livenessProbe"]["httpGet"] == {"scheme": "HTTPS", "path": "/healthz", "port": 8443}
    vol = one([{"kind": "v", "metadata": v} for v in spec["volumes"]], "v", "webhook-tls")["metadata"]
    assert vol["secret"]["secretName"] == TLS
    svc = one(objs, "Service", WEBHOOK, "kube-system")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    https = next(p for p in svc["spec"]["ports"] if p["name"] == "https")
    assert https == {"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    assert not find(objs, "InitializerConfiguration")


def test_rbac_grants_what_the_webhook_reads_and_no_deployment_access():
    objs = render_for("1.28.0", {"tproxy.useRBAC": True})
    role = one(objs, "ClusterRole", "tproxy-tproxy-initializer")
    assert {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]} in role["rules"]
    assert not [r for r in role["rules"] if "deployments" in r["resources"] or "pods" in r["resources"]]
    for obj in objs:
        if obj["kind"] in {"ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"}:
            assert obj["apiVersion"] == "rbac.authorization.k8s.io/v1"
    dep = one(objs, "Deployment", "tproxy-tproxy-initializer")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "tproxy-tproxy-initializer"


# ---- the serving certificate ---------------------------------------------------------------------


def _certs(objs: list[dict]) -> tuple[x509.Certificate, x509.Certificate, bytes]:
    secret = one(objs, "Secret", TLS, "kube-system")
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert base64.b64decode(hook(objs)["clientConfig"]["caBundle"]) == data["ca.crt"]
    return x509.load_pem_x509_certificate(data["ca.crt"]), x509.load_pem_x509_certificate(data["tls.crt"]), data["tls.key"]


def test_the_generated_certificate_is_signed_by_the_ca_bundle_for_the_service_host():
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    ca, cert, key = _certs(render_for("1.28.0", {"tproxy.webhook.certValidityDays": 30}))
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "tproxy-tproxy-webhook.kube-system.svc" in names
    assert load_pem_private_key(key, None).public_key().public_numbers() == cert.public_key().public_numbers()
    days = (cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).days
    assert 28 <= days <= 30


def test_helm_template_without_a_cluster_generates_a_new_certificate_each_time():
    """`lookup` returns nothing to `helm template`: documented in chart/README.md."""
    first, second = (_certs(render_for("1.28.0"))[0] for _ in range(2))
    assert first.serial_number != second.serial_number


def test_cert_manager_issues_the_certificate_and_injects_the_ca():
    objs = render_for("1.28.0", {"tproxy.webhook.certManager.enabled": True}, "--api-versions", "cert-manager.io/v1")
    assert not find(objs, "Secret", TLS)
    assert "caBundle" not in hook(objs)["clientConfig"]
    assert mwc(objs)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"kube-system/{TLS}"
    issuer = one(objs, "Issuer", "tproxy-tproxy-webhook-selfsigned", "kube-system")
    assert issuer["spec"] == {"selfSigned": {}}
    cert = one(objs, "Certificate", TLS, "kube-system")
    assert cert["spec"]["secretName"] == TLS
    assert "tproxy-tproxy-webhook.kube-system.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"] == {"name": "tproxy-tproxy-webhook-selfsigned", "kind": "Issuer", "group": "cert-manager.io"}
    assert cert["spec"]["duration"] == "87600h"
    objs = render_for(
        "1.28.0",
        {
            "tproxy.webhook.certManager.enabled": True,
            "tproxy.webhook.certManager.issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
        },
        "--api-versions",
        "cert-manager.io/v1",
    )
    assert not find(objs, "Issuer")
    assert one(objs, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_cert_manager_without_its_api_is_refused_with_the_reason():
    err = render_fails("1.28.0", {"tproxy.webhook.certManager.enabled": True})
    assert "tproxy.webhook.certManager.enabled=true needs cert-manager (cert-manager.io/v1)" in err


# ---- monitoring --------------------------------------------------------------------------------------


def test_monitoring_is_off_by_default_and_the_service_monitor_needs_its_api():
    objs = render_for("1.28.0")
    assert not find(objs, "ServiceMonitor") and not find(objs, "ConfigMap", "tproxy-tproxy-dashboard")
    on = {"tproxy.monitoring.serviceMonitor.enabled": True}
    assert not find(render_for("1.28.0", on), "ServiceMonitor")
    objs = render_for(
        "1.28.0",
        {**on, "tproxy.monitoring.serviceMonitor.labels": {"release": "prom"}},
        "--api-versions",
        "monitoring.coreos.com/v1",
    )
    sm = one(objs, "ServiceMonitor", "tproxy-tproxy", NS)
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sorted(sm["spec"]["namespaceSelector"]["matchNames"]) == ["kube-system", NS]
    # every endpoint port is one a metrics Service has, and each Service's port is a container port
    services = [o for o in objs if o["kind"] == "Service" and o["metadata"]["labels"].get("tproxy-metrics") == "true"]
    for svc in services:
        assert all(
            sm["spec"]["selector"]["matchLabels"][k] == svc["metadata"]["labels"][k]
            for k in sm["spec"]["selector"]["matchLabels"]
        )
    svc_ports = {p["name"]: p for s in services for p in s["spec"]["ports"]}
    assert set(svc_ports) == {"initializer-metrics", "podwatch-metrics", "tproxy-metrics"}
    assert {e["port"] for e in sm["spec"]["endpoints"]} >= set(svc_ports)
    ds = one(objs, "DaemonSet")
    ds_ports = {p["containerPort"] for c in ds["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert {svc_ports["podwatch-metrics"]["targetPort"], svc_ports["tproxy-metrics"]["targetPort"]} <= ds_ports


def _registered_metrics() -> set[str]:
    """Names registered with prometheus_client in the components' source (Counter/Gauge/Histogram)."""
    names = set()
    for part in ("initializer", "podwatch", "proxy", "controllerkit"):
        for path in (REPO / part).glob("*.py"):
            names |= set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"([a-z_]+)"', path.read_text()))
    return names


def test_the_grafana_dashboard_queries_only_metrics_the_components_export():
    objs = render_for("1.28.0", {"tproxy.monitoring.grafanaDashboard.enabled": True})
    cm = one(objs, "ConfigMap", "tproxy-tproxy-dashboard", NS)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["tproxy.json"])
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(tproxy_[a-z_]+)", e)}
    registered = _registered_metrics()
    assert len(registered) > 20
    for name in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert name in registered or base in registered, f"dashboard queries {name}, which no component exports"
    # all four components are on it: the proxy, podwatch, the initializer and its webhook mode
    for prefix in ("tproxy_requests", "tproxy_podwatch_", "tproxy_initializer_deployments", "tproxy_initializer_webhook_"):
        assert any(u.startswith(prefix) for u in used), prefix


# ---- bad values ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values,message",
    [
        ({"tproxy.useWebhook": "yes"}, "useWebhook"),
        ({"tproxy.webhook.timeoutSeconds": 31}, "timeoutSeconds"),
        ({"tproxy.webhook.timeoutSeconds": 0}, "timeoutSeconds"),
        ({"tproxy.webhook.reinvocationPolicy": "Always"}, "reinvocationPolicy"),
        ({"tproxy.webhook.port": 70000}, "port"),
        ({"tproxy.webhook.namespaceLabels": {"tproxy-injection": "not a label value"}}, "namespaceLabels"),
        ({"tproxy.webhook.objectSelector": {"matchLabel": {"a": "b"}}}, "objectSelector"),
        ({"tproxy.webhook.objectSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}, "operator"),
        ({"tproxy.webhook.certManager.issuerRef": {"kind": "ClusterIssuer"}}, "name is required"),
        ({"tproxy.webhook.certManager.enable": True}, "enable"),
        ({"tproxy.monitoring.serviceMonitor.interval": "often"}, "interval"),
    ],
    ids=lambda v: None if isinstance(v, dict) else v,
)
def test_bad_values_are_refused_naming_the_value(values, message):
    err = render_fails("1.28.0", values)
    assert "values don't meet the specifications of the schema" in err and message in err


# ---- helm install / upgrade against kubesim (1.13 serves admissionregistration v1beta1) ----------------------


def test_helm_upgrade_keeps_the_serving_certificate(kubesim_server_factory, tmp_path):
    srv = kubesim_server_factory(k8s_version="1.13")
    env = {
        **os.environ,
        "KUBECONFIG": srv.write_kubeconfig(str(tmp_path / "kubeconfig")),
        "HOME": str(tmp_path),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=90, env=env, cwd=REPO)
        assert proc.returncode == 0, f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def manifest() -> list[dict]:
        return [d for d in yaml.safe_load_all(run("get", "manifest", "tproxy", "-n", "tproxy").stdout) if d]

    def live(*what: str) -> dict:
        proc = subprocess.run([KUBECTL, "get", *what, "-o", "json"], capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    run(
        "install",
        "tproxy",
        "chart/",
        "--namespace",
        "tproxy",
        "--create-namespace",
        "--set",
        "tproxy.useWebhook=true,tproxy.useRBAC=true",
    )
    secret_path = ("secret", "-n", "kube-system", TLS)
    mwc_path = ("mutatingwebhookconfigurations.v1beta1.admissionregistration.k8s.io", WEBHOOK)
    first = live(*secret_path)
    assert first["metadata"]["annotations"]["tproxy/webhook-cert-source"] == "generated"
    assert live(*mwc_path)["webhooks"][0]["clientConfig"]["caBundle"] == first["data"]["ca.crt"]

    run("upgrade", "tproxy", "chart/", "-n", "tproxy", "--reuse-values", "--set", "tproxy.webhook.timeoutSeconds=5")
    second = live(*secret_path)
    assert second["metadata"]["annotations"]["tproxy/webhook-cert-source"] == "existing-secret"
    assert second["data"] == first["data"]
    assert live(*mwc_path)["webhooks"][0]["clientConfig"]["caBundle"] == first["data"]["ca.crt"]
    # 1.13: no timeoutSeconds field (the upgrade went through all the same)
    assert "timeoutSeconds" not in one(manifest(), "MutatingWebhookConfiguration")["webhooks"][0]

    run("uninstall", "tproxy", "-n", "tproxy")


def test_helm_lint_passes_in_webhook_mode():
    for values in ({}, {"tproxy.useRBAC": True, "tproxy.useWebhook": True}):
        proc = helm("lint", str(CHART), "--kube-version", "1.28.0", *set_args(values))
        assert "0 chart(s) failed" in proc.stdout and "[ERROR]" not in proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_installed_webhook_runs_with_the_charts_account_certificate_and_flags(kubesim_server_factory, tmp_path):
    """What `helm install` put into kubesim 1.13, used as a cluster would: the Deployment's own args, the
    Secret's certificate, the service account's token (so RBAC is the chart's). The webhook gets ready
    (config, CA bundle, namespace list readable), copies the bundle into a new namespace, and answers a
    review over TLS verified with the configuration's caBundle for the Service's host name."""
    from test_initializer_webhook import patch_of, review_of, tutorial_deployment, verify_like_apiserver

    from kubesim.polling import wait_for

    srv = kubesim_server_factory(k8s_version="1.13")
    admin_kc = srv.write_kubeconfig(str(tmp_path / "admin.kubeconfig"))
    env = {
        **os.environ,
        "KUBECONFIG": admin_kc,
        "HOME": str(tmp_path),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
    }

    def run(binary: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=90, env=env, cwd=REPO)
        assert not check or proc.returncode == 0, f"{binary} {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc

    run(
        HELM,
        "install",
        "tproxy",
        "chart/",
        "--namespace",
        "tproxy",
        "--create-namespace",
        "--set",
        "tproxy.useWebhook=true,tproxy.useRBAC=true",
    )
    objs = [d for d in yaml.safe_load_all(run(HELM, "get", "manifest", "tproxy", "-n", "tproxy").stdout) if d]
    secret = json.loads(run(KUBECTL, "get", "secret", "-n", "kube-system", TLS, "-o", "json").stdout)
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    ca_bundle = base64.b64decode(hook(objs)["clientConfig"]["caBundle"])
    assert ca_bundle == (tmp_path / "ca.crt").read_bytes()

    dep = one(objs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    token = srv.service_account_token(dep["metadata"]["namespace"], spec["serviceAccountName"])
    sa_kc = srv.write_kubeconfig(str(tmp_path / "sa.kubeconfig"), token=token)
    # the token is held to the chart's RBAC: what the webhook needs, nothing else
    sa_env = {**env, "KUBECONFIG": sa_kc}
    denied = subprocess.run(
        [KUBECTL, "get", "secrets", "-n", "kube-system"], capture_output=True, text=True, timeout=60, env=sa_env
    )
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
    assert subprocess.run([KUBECTL, "get", "namespaces"], capture_output=True, text=True, timeout=60, env=sa_env).returncode == 0
    replaced = ("--tls-cert-file=", "--tls-private-key-file=", "--port=", "--metrics-port=")
    args = [a for a in container(spec, "tproxy-initializer")["args"] if not a.startswith(replaced)]
    port, mport = _free_port(), _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "initializer",
            *args,
            "--kubeconfig",
            sa_kc,
            f"--tls-cert-file={tmp_path / 'tls.crt'}",
            f"--tls-private-key-file={tmp_path / 'tls.key'}",
            f"--port={port}",
            "--host=127.0.0.1",
            f"--metrics-port={mport}",
            "--metrics-host=127.0.0.1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def ready() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{mport}/readyz", timeout=2).status == 200
            except OSError:
                return False

        try:
            wait_for(ready, timeout=30, interval=0.1, what="the webhook's /readyz")
        except AssertionError:
            proc.kill()
            raise AssertionError(f"the webhook never got ready: {proc.communicate(timeout=10)[1][-3000:]}") from None

        run(KUBECTL, "create", "namespace", "team-a")
        wait_for(
            lambda: run(KUBECTL, "get", "configmap", "-n", "team-a", "tproxy-tproxy-root-certs", check=False).returncode == 0,
            timeout=30,
            interval=0.1,
            what="the CA bundle copy",
        )

        ctx = ssl.create_default_context(cadata=ca_bundle.decode())
        host = f"{WEBHOOK}.kube-system.svc"
        conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
        conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=host)
        deployment = tutorial_deployment()
        deployment["metadata"]["namespace"] = "team-a"
        rev = review_of(deployment, api_version="admission.k8s.io/v1beta1", namespace="team-a")
        conn.request(
            "POST",
            hook(objs)["clientConfig"]["service"]["path"],
            body=json.dumps(rev),
            headers={"Content-Type": "application/json"},
        )
        resp = verify_like_apiserver(rev, json.loads(conn.getresponse().read()))
        conn.close()
        assert resp["allowed"] is True
        assert any(op["path"] == "/spec/template/spec/initContainers" for op in patch_of(resp))
        # the same name, signed by another CA, is refused: the caBundle is what makes it trusted
        with pytest.raises(ssl.SSLCertVerificationError):
            other = ssl.create_default_context(
                cadata=_certs(render_for("1.13.0", {"tproxy.useWebhook": True}))[0]
                .public_bytes(serialization.Encoding.PEM)
                .decode()
            )
            other.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=host)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert "forbidden" not in err.lower(), err[-3000:]
    run(HELM, "uninstall", "tproxy", "-n", "tproxy")
