"""Manual mode: the chart without Initializers and ``examples/debian-app-locked-manual.yaml``.

On clusters without the alpha API (the tutorial's "Deploying without initializers"), the init
container and CA bundle are written into the deployment by hand; podwatch and the proxy work the same.
"""

import pytest

from controllerkit.errors import NotFound
from kubesim.demo import locked_ok
from kubesim.kubelet import e2e

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def manual():
    from kubesim.kubelet.cluster import SimCluster

    c = SimCluster(kubelet_options={"backoff_initial": 1.0, "backoff_cap": 4.0})
    c.start()
    try:
        values = "tproxy.useInitializer=false,tproxy.useRBAC=true"
        docs = e2e.chart_documents(values)  # what helm installs, for the assertions
        e2e.helm_install(c, values, namespace="default")
        c.wait_pods("app=tproxy,component=tproxy", "default", timeout=60)
        leaks = e2e.LeakCounter(c.topology.internet).install()
        e2e.kubectl_apply(c, "debian-app-locked-manual.yaml")
        pod = c.wait_pods("app=debian-app,variant=locked-manual", timeout=60)[0]
        yield {"cluster": c, "docs": docs, "pod": pod, "leaks": leaks}
    finally:
        c.stop()


def test_no_initializer_is_installed(manual):
    kinds = {d["kind"] for d in manual["docs"]}
    assert "InitializerConfiguration" not in kinds
    with pytest.raises(NotFound):
        manual["cluster"].client.get("/apis/extensions/v1beta1/namespaces/kube-system/deployments/tproxy-tproxy-initializer")


def test_manual_locked_app_behaves_as_in_the_tutorial(manual):
    r = e2e.wait_round(manual["cluster"], manual["pod"])
    assert locked_ok(r), r


def test_manual_locked_app_leaks_nothing(manual):
    out = manual["cluster"].exec_in_pod(
        manual["pod"], ["curl", "-s", "-m", "8", "-o", "/dev/null", "-w", "%{http_code}", "https://www.google.com/"]
    )
    assert out.stdout == "418"
    assert manual["leaks"].packets() == 0
