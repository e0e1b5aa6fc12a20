"""The soak's invariant checks fail when they should (soak/checks.py): each on data that breaks it."""

from controllerkit.errors import ApiError
from soak import checks

NAT_OK = """*nat
:PREROUTING ACCEPT [0:0]
:TPROXY-REDIRECT - [0:0]
-A PREROUTING -m comment --comment "tproxy: redirect" -j TPROXY-REDIRECT
-A TPROXY-REDIRECT -s 198.18.1.2/32 -p tcp -m multiport --dports 80,443 -m comment --comment "default/a" -j REDIRECT --to-ports 8080
COMMIT
"""
FILTER_OK = """*filter
:FORWARD ACCEPT [0:0]
-A FORWARD -m comment --comment "tproxy: guard" -j TPROXY-GUARD
-A TPROXY-GUARD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A TPROXY-GUARD -s 198.18.1.2/32 -m comment --comment "default/a" -j TPROXY-GUARD-LOCKED
-A TPROXY-GUARD-LOCKED -p udp -m udp --dport 53 -j RETURN
-A TPROXY-GUARD-LOCKED -p tcp -j REJECT --reject-with tcp-reset
-A TPROXY-GUARD-LOCKED -j REJECT --reject-with icmp-admin-prohibited
COMMIT
"""


def deployment(inits, volumes=("ca-certs-debian",), pending=None):
    meta = {"name": "d"}
    if pending:
        meta["initializers"] = {"pending": pending}
    return {
        "metadata": meta,
        "spec": {
            "template": {"spec": {"initContainers": [{"name": n} for n in inits], "volumes": [{"name": v} for v in volumes]}}
        },
    }


def test_injection_exactly_once_first_and_only_when_annotated():
    assert checks.injection_problem(deployment(["tproxy", "user"]), True) is None
    assert checks.injection_problem(deployment([]), False) is None
    assert "2 times" in checks.injection_problem(deployment(["tproxy", "tproxy"]), True)
    assert "0 times" in checks.injection_problem(deployment([]), True)
    assert "not first" in checks.injection_problem(deployment(["user", "tproxy"]), True)
    assert "more than once" in checks.injection_problem(deployment(["tproxy"], ("ca-certs-debian",) * 2), True)
    assert "plain deployment injected" in checks.injection_problem(deployment(["tproxy"]), False)
    assert "pending" in checks.injection_problem(deployment(["tproxy"], pending=[{"name": "x"}]), True)


def test_a_504_a_late_answer_or_no_answer_is_a_hang_a_reasoned_failure_is_not():
    assert checks.classify_create(0.2, None) == "created"
    assert checks.classify_create(0.2, ApiError(422, "Invalid", "volume ca-certs conflicts")) == "failed"
    assert checks.classify_create(30.0, ApiError(504, "Timeout", "request did not complete")) == "hang"
    assert checks.classify_create(40.0, None) == "hang"
    assert checks.classify_create(1.0, ConnectionError("reset")) == "hang"


def test_convergence_needs_jumps_first_redirect_and_guard_for_every_locked_pod():
    r = checks.node_rules(NAT_OK, FILTER_OK)
    assert checks.convergence_gaps(r, {"198.18.1.2"}) == []
    assert checks.convergence_gaps(r, {"198.18.1.2", "198.18.1.3"}) == [
        "no redirect for ['198.18.1.3']",
        "no guard for ['198.18.1.3']",
    ]
    flushed = NAT_OK.replace("-A TPROXY-REDIRECT -s", "#")
    assert "no redirect for ['198.18.1.2']" in checks.convergence_gaps(checks.node_rules(flushed, FILTER_OK), {"198.18.1.2"})
    nojump = FILTER_OK.replace('-A FORWARD -m comment --comment "tproxy: guard" -j TPROXY-GUARD\n', "")
    assert "filter FORWARD does not jump to TPROXY-GUARD first" in checks.convergence_gaps(
        checks.node_rules(NAT_OK, nojump), {"198.18.1.2"}
    )
    second = NAT_OK.replace("-A PREROUTING -m", "-A PREROUTING -j KUBE-SERVICES\n-A PREROUTING -m")
    assert "nat PREROUTING does not jump to TPROXY-REDIRECT first" in checks.convergence_gaps(
        checks.node_rules(second, FILTER_OK), set()
    )
    assert checks.convergence_gaps(r, set(), {"198.18.1.2"}) == ["stale redirect for ['198.18.1.2']"]


def test_locked_pods_are_podwatchs_definition():
    def pod(ann="true", ip="198.18.1.2", phase="Running", host=False):
        return {
            "metadata": {"annotations": {checks.ANNOTATION: ann}},
            "spec": {"hostNetwork": host},
            "status": {"podIP": ip, "phase": phase},
        }

    assert checks.locked_pod_ips([pod(), pod("True", "198.18.1.3")]) == {"198.18.1.2", "198.18.1.3"}
    assert checks.locked_pod_ips([pod("false"), pod(ip=None), pod(phase="Failed"), pod(host=True)]) == set()


def test_growth_is_flagged_only_when_the_slope_and_the_rise_exceed_the_limit():
    flat = [(t, 50.0 + (t % 3) * 0.5) for t in range(0, 300, 2)]
    assert checks.growth_verdict(flat, 5.0)["grows"] is False
    leak = [(t, 50.0 + t / 6) for t in range(0, 300, 2)]  # 10 MB per minute
    v = checks.growth_verdict(leak, 5.0)
    assert v["grows"] is True and abs(v["slope_per_min"] - 10) < 0.01
    short = [(t, 50.0 + t) for t in range(0, 30, 2)]
    assert checks.growth_verdict(short, 5.0)["judged"] is False
