"""proxy.policy: parsing, validation messages, indexed matching, address ranges."""

import time

import pytest

from proxy.policy import Policy, PolicyError, normalize_host, normalize_path


def pol(rules, **kw):
    return Policy.from_dict({"rules": rules, **kw})


def allowed(p, host, path="/", method="GET", scheme="https", namespace=None):
    return p.decide(normalize_host(host), method=method, scheme=scheme, path=path, namespace=namespace).allowed


def test_builtin_policy_is_the_tutorials():
    p = Policy.builtin()
    assert allowed(p, "storage.googleapis.com", "/solutions-public-assets/x/y.py")
    assert not allowed(p, "storage.googleapis.com", "/other-bucket/")
    assert not allowed(p, "www.google.com", "/")
    assert not allowed(p, "storage.googleapis.com", "/solutions-public-assets/", scheme="http")


def test_exact_host_is_case_insensitive_and_ignores_trailing_dot():
    p = pol([{"host": "Example.COM."}])
    assert allowed(p, "example.com") and allowed(p, "EXAMPLE.com.")


def test_wildcard_matches_subdomains_not_apex():
    p = pol([{"host": "*.example.com"}])
    assert allowed(p, "a.example.com") and allowed(p, "a.b.example.com")
    assert not allowed(p, "example.com")
    assert not allowed(p, "badexample.com")


def test_idna_hosts_are_normalised():
    p = pol([{"host": "bücher.example"}])
    assert allowed(p, "xn--bcher-kva.example")
    assert allowed(p, "BÜCHER.example")


def test_path_prefix_resolves_dot_segments_and_escapes():
    p = pol([{"host": "a.example", "paths": ["/public/"]}])
    assert allowed(p, "a.example", "/public/file?x=1")
    assert not allowed(p, "a.example", "/public/../secret")
    assert not allowed(p, "a.example", "/public/%2e%2e/secret")
    assert not allowed(p, "a.example", "/publicity")


def test_methods_schemes_namespaces_restrict():
    p = pol([{"host": "a.example", "methods": ["get"], "schemes": ["https"], "namespaces": ["team-a"]}])
    assert allowed(p, "a.example", namespace="team-a")
    assert not allowed(p, "a.example", method="POST", namespace="team-a")
    assert not allowed(p, "a.example", scheme="http", namespace="team-a")
    assert not allowed(p, "a.example", namespace="team-b")


def test_ip_literal_only_by_exact_rule():
    p = pol([{"host": "203.0.113.7"}, {"host": "2001:DB8::0:1"}])
    assert allowed(p, "203.0.113.7") and allowed(p, "[2001:db8::1]")
    assert not allowed(p, "203.0.113.8")


def test_first_matching_rule_is_reported():
    p = pol([{"host": "a.example", "paths": ["/x/"]}, {"host": "*.example"}])
    d = p.decide("a.example", method="GET", scheme="https", path="/y")
    assert d.allowed and d.rule.index == 1


def test_default_deny_ranges_cover_private_and_metadata():
    p = pol([])
    for a in (
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
    ):
        assert p.address_denied(a), a
    for a in ("203.0.113.10", "2001:db8::10", "8.8.8.8"):
        assert not p.address_denied(a), a


def test_allow_ranges_are_exceptions():
    p = pol([], allow_ranges=["10.9.0.0/16"])
    assert not p.address_denied("10.9.1.1") and p.address_denied("10.8.1.1")


def test_custom_deny_ranges_replace_default():
    p = pol([], deny_ranges=["203.0.113.0/24"])
    assert p.address_denied("203.0.113.5") and not p.address_denied("10.0.0.1")


def test_decision_cost_does_not_grow_with_rules():
    small = pol([{"host": f"h{i}.example"} for i in range(10)] + [{"host": "*.wild.example"}])
    big = pol(
        [{"host": f"h{i}.example"} for i in range(20000)]
        + [{"host": f"*.w{i}.example"} for i in range(20000)]
        + [{"host": "*.wild.example"}]
    )

    def cost(p):
        t = time.perf_counter()
        for _ in range(3000):
            p.decide("x.y.wild.example", method="GET", scheme="https", path="/")
            p.decide("h5.example", method="GET", scheme="https", path="/")
            p.decide("nope.example", method="GET", scheme="https", path="/")
        return time.perf_counter() - t

    import gc

    gc.disable()  # a collection landing in one measurement is noise, not decision cost
    try:
        best_small = min(cost(small) for _ in range(5))
        best_big = min(cost(big) for _ in range(5))
    finally:
        gc.enable()
    # a linear scan would be ~4000x slower here; allow generous noise on a shared 2-core machine
    assert best_big < best_small * 3 + 0.01


def test_normalize_path_keeps_trailing_slash():
    assert normalize_path("/a/b/../c/") == "/a/c/"
    assert normalize_path("//a") == "/a"


@pytest.mark.parametrize(
    "doc, message",
    [
        ("[1, 2", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("rules: {}\n", "rules: must be a list"),
        ("mode: strict\nrules: []\n", "mode: 'strict' is not one of"),
        ("rulez: []\n", r"unknown key\(s\) \['rulez'\]"),
        ("rules: [3]\n", r"rules\[0\]: must be a mapping"),
        ("rules: [{paths: [/]}]\n", r"rules\[0\].host: required"),
        ("rules: [{host: 'a.*.example'}]\n", "only a leading"),
        ("rules: [{host: '*.10.0.0.1'}]\n", "wildcard cannot apply to an IP"),
        ("rules: [{host: 'bad host'}]\n", "not a valid hostname"),
        ("rules: [{host: a.example, paths: [x/]}]\n", "must start with '/'"),
        ("rules: [{host: a.example, paths: []}]\n", "non-empty list of strings"),
        ("rules: [{host: a.example, methods: ['GE T']}]\n", "is not an HTTP method"),
        ("rules: [{host: a.example, schemes: [ftp]}]\n", r"\['ftp'\] not in"),
        ("rules: [{host: a.example, port: 80}]\n", r"unknown key\(s\) \['port'\]"),
        ("rules: []\ndeny_ranges: [10.0.0.0/33]\n", r"deny_ranges\[0\]"),
        ("rules: []\nallow_ranges: 10.0.0.0/8\n", "allow_ranges: must be a list"),
    ],
)
def test_validation_messages(doc, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_yaml(doc, source="p.yaml")


def test_load_missing_file_says_so(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy"):
        Policy.load(str(tmp_path / "nope.yaml"))


# -- the index agrees with the obvious linear scan -------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

_labels = st.sampled_from(["a", "b", "c", "example", "com", "xn--bcher-kva"])
_names = st.lists(_labels, min_size=1, max_size=4).map(".".join)
_patterns = st.one_of(_names, _names.map(lambda n: "*." + n))


def _linear(rules, host):
    """Reference matcher: the first rule (lowest index) whose pattern covers host."""
    for i, pattern in enumerate(rules):
        if pattern.startswith("*."):
            if host.endswith("." + pattern[2:]):
                return i
        elif host == pattern:
            return i
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(_patterns, max_size=12), _names)
def test_index_matches_linear_scan(patterns, host):
    p = pol([{"host": h} for h in patterns])
    d = p.decide(host, method="GET", scheme="https", path="/")
    expected = _linear(patterns, host)
    assert (d.rule.index if d.allowed else None) == expected


def test_configmap_style_symlink_swap_changes_the_signature(tmp_path):
    """Kubernetes updates a mounted ConfigMap by swapping the ..data symlink; stat() must follow it."""
    import os
    from proxy.policy_watch import signature

    v1, v2 = tmp_path / "..v1", tmp_path / "..v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "policy.yaml").write_text("rules: []\n")
    (v2 / "policy.yaml").write_text("rules: []\n")
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/policy.yaml", tmp_path / "policy.yaml")
    before = signature(str(tmp_path / "policy.yaml"))
    os.symlink("..v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert signature(str(tmp_path / "policy.yaml")) != before


_paths = st.sampled_from(["/", "/a/", "/a/b", "/b/", "/a/../b/x", "/%61/"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"host": _patterns},
            optional={
                "paths": st.lists(st.sampled_from(["/a/", "/b/", "/a/b"]), min_size=1, max_size=2),
                "methods": st.lists(st.sampled_from(["GET", "POST"]), min_size=1, max_size=2),
            },
        ),
        max_size=8,
    ),
    _names,
    _paths,
    st.sampled_from(["GET", "POST", "PUT"]),
)
def test_decide_matches_a_linear_scan_with_paths_and_methods(rules, host, path, method):
    """The index, the per-host memo and the lazy path normalisation give the same first match as
    checking every rule in order against the normalised path."""
    p = pol(rules)
    npath = normalize_path(path)
    expected = None
    for i, r in enumerate(rules):
        covers = host.endswith("." + r["host"][2:]) if r["host"].startswith("*.") else host == r["host"]
        if (
            covers
            and method in r.get("methods", [method])
            and any(npath.startswith(normalize_path(x)) for x in r.get("paths", ["/"]))
        ):
            expected = i
            break
    for _ in range(2):  # the second decision comes from the memo
        d = p.decide(host, method=method, scheme="https", path=path)
        assert (d.rule.index if d.allowed else None) == expected


def test_candidate_memo_stays_bounded_and_correct():
    p = pol([{"host": "*.example"}])
    for i in range(5000):
        assert p.decide(f"h{i}.example", method="GET", scheme="https", path="/").allowed
        assert not p.decide(f"h{i}.other", method="GET", scheme="https", path="/").allowed
    assert len(p._candidates) <= 4097
