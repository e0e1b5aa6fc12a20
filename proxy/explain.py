"""``python -m proxy.policy explain``: which scope and which rule would decide a request.

    python -m proxy.policy explain --policy policy.yaml --namespace payments --service-account api \\
        --labels app=checkout,tier=web [--namespace-policy their-policy.yaml] [--method POST] URL

prints the scope chosen for that pod and why, the decision and the rule (or the reason no rule
allowed it), and ``splice: yes`` when an https connection to that host would be spliced (forwarded
by SNI undecrypted: proxy/splice.py). ``--namespace-policy`` checks the namespace's own ConfigMap policy (its ``policy.yaml``)
against the ceiling first, as the proxy would. Exit status: 0 when it explained (allowed or not),
2 with a one-line error on a bad policy file, namespace policy or argument. Names are not resolved:
``deny_ranges`` are judged on resolved addresses at request time (here only for IP-literal hosts).
"""

from __future__ import annotations

import sys
import urllib.parse

from controllerkit.cli import ExactArgumentParser
from proxy import delegated, splice
from proxy.decision import RequestFacts, decide, finalize
from proxy.policy import PolicyError, Rule, is_ip_literal
from proxy.scopes import Scope, ScopedPolicy

DEFAULT_POLICY = "/etc/tproxy/policy/policy.yaml"


def _labels(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        for part in filter(None, value.split(",")):
            k, eq, v = part.partition("=")
            if not eq or not k:
                raise PolicyError(f"--labels: {part!r} is not key=value")
            out[k] = v
    return out


def explain(
    scoped: ScopedPolicy,
    url: str,
    *,
    namespace: str = "",
    service_account: str = "",
    labels: dict[str, str] | None = None,
    method: str = "GET",
    delegated_scopes: dict[str, Scope] | None = None,
) -> list[str]:
    """The explanation's lines (raises PolicyError for a URL that cannot be a request)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyError(f"URL: {url!r} is not an http:// or https:// URL with a host")
    scheme = parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    scope = scoped.select(namespace, service_account, labels or {}, delegated_scopes)
    lines = [
        f"pod: namespace={namespace or '(unknown)'} serviceAccount={service_account or '-'} "
        f"labels={','.join(f'{k}={v}' for k, v in sorted((labels or {}).items())) or '-'}",
        f"scope: {scope.name} ({scope.selector.describe()}; mode {scope.mode}; from {scope.origin})",
    ]
    if not namespace:
        lines.append("  an unknown source always gets the default scope")
    facts = RequestFacts(
        method=method.upper(),
        path=path,
        scheme=scheme,
        host_headers=[parts.netloc.rsplit("@", 1)[-1]],
        authority="",
        http2=False,
        absolute_target=None,
        regular=False,
        request_host=parts.hostname,
        request_port=port,
        destination_port=port,
        client_tls=scheme == "https",
        sni=parts.hostname if scheme == "https" else None,
        namespace=namespace or None,
    )
    v = finalize(decide(facts, scope.policy, scoped.deny), scope.mode)
    lines.append(f"decision: {v.decision} (reason {v.reason})")
    if isinstance(v.rule, Rule):
        lines.append(f"rule: {v.rule.label}")
    elif v.reason == "no-matching-rule":
        lines.append(f"rule: none of the scope's {len(scope.policy.rules)} rules matches {method.upper()} {url}")
    if scheme == "https":
        spliced = splice.connection_verdict(parts.hostname, port, namespace or None, False, scope.policy, scoped.deny)
        if spliced is not None and isinstance(spliced.rule, Rule):
            lines.append(
                f"splice: yes, by {spliced.rule.label}: the TLS connection is forwarded by SNI without decryption "
                "(no path or method check, one audit line per connection, the pod sees the origin's certificate)"
            )
    host = v.host
    if host and is_ip_literal(host) and v.decision != "block" and scope.policy.address_denied(host):
        lines.append(
            "but: the address is in deny_ranges (or the ceiling's ranges): blocked at request time"
            if scope.mode == "enforce"
            else "note: the address is in deny_ranges (reported, not blocked)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = ExactArgumentParser(prog="python -m proxy.policy", description="Check tproxy policy files and explain decisions.")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="which scope and rule would decide a request from a pod")
    ex.add_argument("--policy", default=DEFAULT_POLICY, help=f"the policy file (default {DEFAULT_POLICY})")
    ex.add_argument("--namespace", default="", help="the pod's namespace (empty: an unknown source)")
    ex.add_argument("--service-account", default="", help="the pod's service account")
    ex.add_argument("--labels", action="append", default=[], help="the pod's labels, k=v[,k=v] (repeatable)")
    ex.add_argument(
        "--namespace-policy", default="", help="the namespace's own policy.yaml (its ConfigMap's), checked against the ceiling"
    )
    ex.add_argument("--method", default="GET")
    ex.add_argument("url")
    args = ap.parse_args(argv)
    try:
        scoped = ScopedPolicy.load(args.policy)
        labels = _labels(args.labels)
        mine: dict[str, Scope] = {}
        if args.namespace_policy:
            if not args.namespace:
                raise PolicyError("--namespace-policy needs --namespace")
            try:
                with open(args.namespace_policy, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise PolicyError(f"cannot read {args.namespace_policy}: {e}") from None
            mine[args.namespace] = delegated.parse(text, args.namespace, scoped, args.namespace_policy)
        lines = explain(
            scoped,
            args.url,
            namespace=args.namespace,
            service_account=args.service_account,
            labels=labels,
            method=args.method,
            delegated_scopes=mine,
        )
    except PolicyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
