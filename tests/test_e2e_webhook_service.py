"""A mutating webhook served by a pod behind a Service on a simulated 1.13 cluster: kubesim's API server
reaches the pod's IP on the pod network (the Service's targetPort), verifies the certificate for
``<service>.<namespace>.svc`` against ``caBundle``, and the pods the netns kubelet creates through the
API (Deployment -> ReplicaSet -> Pod) pass the webhook as on a real cluster. With the webhook's pods
gone and ``failurePolicy: Fail``, pod creates are refused with the real server's message and nothing runs."""

import base64
import functools

import pytest
import trustme

from controllerkit import errors
from controllerkit.kube import resource_path
from kubesim.testing import wait_for

pytestmark = [pytest.mark.root]

wait_for = functools.partial(wait_for, timeout=30.0, interval=0.1)

SERVER = r"""
import base64, json, ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        req = review["request"]
        ops = [{"op": "add", "path": "/metadata/labels/injected", "value": "yes"}]
        resp = {"uid": req["uid"], "allowed": True, "patchType": "JSONPatch",
                "patch": base64.b64encode(json.dumps(ops).encode()).decode()}
        body = json.dumps({"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": resp}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

httpd = ThreadingHTTPServer(("0.0.0.0", 8443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/tls/tls.crt", "/tls/tls.key")
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
print("serving", flush=True)
httpd.serve_forever()
"""


@pytest.fixture(scope="module")
def cluster():
    from kubesim.kubelet.cluster import SimCluster

    c = SimCluster(k8s_version="1.13", internet=False, kubelet_options={"backoff_initial": 0.3, "backoff_cap": 1.0})
    c.start()
    yield c
    c.stop()


def app(name: str) -> dict:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "debian:12", "command": ["sleep", "1000"]}]},
            },
        },
    }


def test_pods_created_by_the_kubelet_pass_a_service_backed_webhook_and_fail_closed_without_it(cluster):
    api = cluster.client
    ca = trustme.CA()
    leaf = ca.issue_cert("hook.default.svc")
    api.create(
        resource_path("v1", "secrets", "default"),
        {
            "metadata": {"name": "hook-tls"},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": base64.b64encode(leaf.cert_chain_pems[0].bytes()).decode(),
                "tls.key": base64.b64encode(leaf.private_key_pem.bytes()).decode(),
            },
        },
    )
    api.create(resource_path("v1", "configmaps", "default"), {"metadata": {"name": "hook-code"}, "data": {"server.py": SERVER}})
    hook = app("hook")
    pod = hook["spec"]["template"]["spec"]
    pod["containers"][0].update(
        command=["python3", "/code/server.py"],
        ports=[{"name": "https", "containerPort": 8443}],
        readinessProbe={"tcpSocket": {"port": 8443}, "periodSeconds": 1},
        volumeMounts=[{"name": "tls", "mountPath": "/tls"}, {"name": "code", "mountPath": "/code"}],
    )
    pod["volumes"] = [{"name": "tls", "secret": {"secretName": "hook-tls"}}, {"name": "code", "configMap": {"name": "hook-code"}}]
    api.create(resource_path("apps/v1", "deployments", "default"), hook)
    api.create(
        resource_path("v1", "services", "default"),
        {"metadata": {"name": "hook"}, "spec": {"selector": {"app": "hook"}, "ports": [{"port": 443, "targetPort": "https"}]}},
    )
    cluster.wait_pods("app=hook", timeout=60)
    api.create(resource_path("v1", "namespaces"), {"metadata": {"name": "apps", "labels": {"inject": "on"}}})
    api.create(
        "/apis/admissionregistration.k8s.io/v1beta1/mutatingwebhookconfigurations",
        {
            "metadata": {"name": "injector"},
            "webhooks": [
                {
                    "name": "inject.example.com",
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "clientConfig": {
                        "service": {"namespace": "default", "name": "hook", "path": "/mutate"},
                        "caBundle": base64.b64encode(ca.cert_pem.bytes()).decode(),
                    },
                    "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                    "namespaceSelector": {"matchLabels": {"inject": "on"}},
                }
            ],
        },
    )
    api.create(resource_path("apps/v1", "deployments", "apps"), app("web"))
    (web,) = cluster.wait_pods("app=web", "apps", timeout=60)
    assert web["metadata"]["labels"]["injected"] == "yes"
    assert web["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"

    # the webhook's pods gone: failurePolicy Fail refuses every pod create in the namespace
    api.patch(resource_path("apps/v1", "deployments", "default", "hook"), {"spec": {"replicas": 0}})
    wait_for(lambda: not cluster.pods("default", "app=hook"), what="the webhook's pod gone")
    with pytest.raises(errors.ApiError) as e:
        api.create(
            resource_path("v1", "pods", "apps"),
            {
                "metadata": {"name": "bare"},
                "spec": {"containers": [{"name": "c", "image": "debian:12", "command": ["sleep", "1000"]}]},
            },
        )
    assert e.value.code == 500 and e.value.message == (
        'Internal error occurred: failed calling webhook "inject.example.com": '
        'Post https://hook.default.svc:443/mutate: no endpoints available for service "hook"'
    )
    api.create(resource_path("apps/v1", "deployments", "apps"), app("blocked"))
    rs = wait_for(
        lambda: [
            r
            for r in api.list(resource_path("apps/v1", "replicasets", "apps"))["items"]
            if r["metadata"]["name"].startswith("blocked-")
        ],
        what="the blocked app's ReplicaSet",
    )
    assert rs[0]["spec"]["replicas"] == 1
    assert not cluster.pods("apps", "app=blocked")  # nothing runs without the webhook's mutation
