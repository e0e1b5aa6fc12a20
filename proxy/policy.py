"""The egress policy: which requests a pod may make, parsed once into an index.

Why an index: the proxy decides on every request, and a policy may hold thousands of rules. Exact
hosts live in a dict, ``*.suffix`` wildcards in a dict keyed by the suffix, and a decision walks
the labels of the request's host (``a.b.example.com`` → ``b.example.com`` → ``example.com`` → ``com``),
so its cost depends on the host, not on the number of rules.

Format (YAML)::

    mode: enforce            # enforce | report | open
    rules:                   # allow rules; a request matching none is blocked
      - host: storage.googleapis.com      # exact, or "*.example.com" (subdomains, not the apex),
        paths: ["/solutions-public-assets/"]  #  or an IP literal (the only way to allow one)
        methods: [GET, HEAD]
        schemes: [https]
        namespaces: [default]             # optional: only pods in these namespaces
      - host: api.example.com
        splice: true                      # optional (default false): forward the TLS connection by
                                          #  SNI without decrypting it (no paths/methods allowed)
    deny_ranges: [10.0.0.0/8, ...]        # destinations blocked whatever the name (default below)
    allow_ranges: []                      # exceptions to deny_ranges

Hosts are compared case-insensitively, without a trailing dot, IDNA-normalised (``bücher.example`` ==
``xn--bcher-kva.example``). Path prefixes are compared against the percent-decoded path with dot
segments resolved, so ``/solutions-public-assets/../x`` does not match ``/solutions-public-assets/``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import posixpath
import urllib.parse
from typing import Any, Callable, Iterable, TypeVar

import idna
import yaml

MODES = ("enforce", "report", "open")
SCHEMES = ("http", "https")
DEFAULT_DENY_RANGES = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "172.16.0.0/12",  # RFC 1918
    "192.168.0.0/16",  # RFC 1918
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, incl. the 169.254.169.254 metadata server
    "100.64.0.0/10",  # carrier-grade NAT (often node/pod networks)
    "::1/128",  # loopback
    "::/128",  # unspecified
    "::ffff:0:0/96",  # IPv4-mapped: would smuggle the IPv4 ranges above
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
)
_RULE_KEYS = {"host", "paths", "methods", "schemes", "namespaces", "splice"}
_TOP_KEYS = {"mode", "rules", "deny_ranges", "allow_ranges"}

#: The tutorial's policy: only the public solutions assets bucket, over HTTPS.
BUILTIN_POLICY: dict[str, Any] = {
    "mode": "enforce",
    "rules": [{"host": "storage.googleapis.com", "paths": ["/solutions-public-assets/"], "schemes": ["https"]}],
}


T = TypeVar("T")


def read_policy_file(path: str) -> str:
    """A policy file's text, or a PolicyError saying why it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise PolicyError(f"cannot read policy {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PolicyError(f"{path}: not UTF-8 text (byte {e.start})") from None


def parse_policy_yaml(text: str, source: str, from_dict: Callable[..., T]) -> T:
    """``from_dict(doc, source=source)`` of the YAML ``text``; a PolicyError naming ``source`` for
    bad YAML or for a document nested too deeply (e.g. a recursive YAML alias ``&a [*a]``)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PolicyError(f"{source}: not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise PolicyError(f"{source}: nested too deeply to parse") from None
    try:
        return from_dict(doc, source=source)
    except RecursionError:
        raise PolicyError(f"{source}: nested too deeply (or refers to itself through a YAML alias)") from None


class PolicyError(ValueError):
    """The policy document is invalid; the message says where and why."""


@functools.lru_cache(maxsize=8192)
def normalize_host(host: str) -> str:
    """Lower-case, strip one trailing dot and brackets, IDNA-encode; IP literals in canonical form.

    Raises ValueError for names that are not valid hostnames.
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h.endswith("."):
        h = h[:-1]
    if not h:
        raise ValueError("empty host")
    try:
        return ipaddress.ip_address(h).compressed
    except ValueError:
        pass
    try:
        h.encode("ascii")
        ascii_host = h.lower()
    except UnicodeEncodeError:
        ascii_host = idna.encode(h, uts46=True).decode("ascii")
    else:
        if any(label.startswith("xn--") for label in ascii_host.split(".")):
            ascii_host = idna.encode(idna.decode(ascii_host), uts46=True).decode("ascii")
    labels = ascii_host.split(".")
    if any(not label or len(label) > 63 for label in labels) or len(ascii_host) > 253:
        raise ValueError(f"not a valid hostname: {host!r}")
    for label in labels:
        if not all(c.isalnum() or c in "-_" for c in label):
            raise ValueError(f"not a valid hostname: {host!r}")
    return ascii_host


@functools.lru_cache(maxsize=8192)
def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def normalize_path(path: str) -> str:
    """The path part of a request target, percent-decoded, dot segments resolved, for prefix matching."""
    p = path.split("?", 1)[0].split("#", 1)[0]
    p = urllib.parse.unquote(p)
    if not p.startswith("/"):
        p = "/" + p
    trailing = p.endswith("/") or p.endswith("/.") or p.endswith("/..")
    norm = posixpath.normpath(p)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if trailing and norm != "/":
        norm += "/"
    return norm


@dataclasses.dataclass(frozen=True)
class Rule:
    index: int
    host: str  # normalised; "*.suffix" for wildcards
    paths: tuple[str, ...] = ()
    methods: frozenset[str] = frozenset()
    schemes: frozenset[str] = frozenset()
    namespaces: frozenset[str] = frozenset()
    splice: bool = False  # HTTPS connections it decides are forwarded by SNI, not decrypted (proxy/splice.py)

    # Worked out once per rule (the dataclass is frozen; cached_property writes the instance dict).
    @functools.cached_property
    def label(self) -> str:
        return f"rules[{self.index}] {self.host}"

    @functools.cached_property
    def allows(self) -> "Decision":
        """The decision "allowed by this rule" (one shared immutable object)."""
        return Decision(True, self, "rule")

    @functools.cached_property
    def audit_members(self) -> str:
        """This rule's audit fields, JSON-encoded without braces: ``"rule":...,"rule_index":N``."""
        return f'"rule":{json.dumps(self.label)},"rule_index":{self.index}'

    def matches(self, method: str, scheme: str, path: str | None, namespace: str | None) -> bool:
        """``path`` is the normalised path, or None when this rule has no paths to compare."""
        if self.methods and method.upper() not in self.methods:
            return False
        if self.schemes and scheme not in self.schemes:
            return False
        if self.namespaces and namespace not in self.namespaces:
            return False
        if self.paths and (path is None or not any(path.startswith(p) for p in self.paths)):
            return False
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: Rule | None
    reason: str  # "rule", "no-matching-rule", ...


NO_MATCH = Decision(False, None, "no-matching-rule")


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: must be a non-empty list of strings")
    return value


def _splice(value: Any, where: str, paths: tuple, methods: frozenset, schemes: frozenset) -> bool:
    """A rule's ``splice`` flag: a boolean, true only where nothing but the host is checked (a spliced
    connection is never decrypted: the proxy sees no path and no method)."""
    if not isinstance(value, bool):
        raise PolicyError(f"{where}.splice: must be true or false, not {value!r}")
    if value and (paths or methods):
        raise PolicyError(
            f"{where}.splice: a spliced rule cannot have paths or methods (a spliced connection is not decrypted, "
            "so they could not be checked); drop them or splice: false"
        )
    if value and schemes and "https" not in schemes:
        raise PolicyError(f"{where}.splice: only HTTPS connections can be spliced, but schemes is {sorted(schemes)}")
    return value


def _networks(value: Any, where: str) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: must be a list of CIDR strings")
    nets = []
    for i, v in enumerate(value):
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError as e:
            raise PolicyError(f"{where}[{i}]: {e}") from None
    return tuple(nets)


class Policy:
    """A validated, indexed policy. Build with :meth:`from_dict`, :meth:`from_yaml` or :meth:`load`."""

    def __init__(self, mode: str, rules: Iterable[Rule], deny_ranges: tuple, allow_ranges: tuple, source: str = "<builtin>"):
        self.mode = mode
        self.rules = tuple(rules)
        self.deny_ranges = deny_ranges
        self.allow_ranges = allow_ranges
        self.source = source
        self._denied_cache: dict[str, bool] = {}
        self._exact: dict[str, list[Rule]] = {}
        self._candidates: dict[str, tuple[Rule, ...]] = {}
        self._wild: dict[str, list[Rule]] = {}
        for r in self.rules:
            if r.host.startswith("*."):
                self._wild.setdefault(r.host[2:], []).append(r)
            else:
                self._exact.setdefault(r.host, []).append(r)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def builtin(cls) -> "Policy":
        return cls.from_dict(BUILTIN_POLICY, source="<builtin>")

    @classmethod
    def load(cls, path: str) -> "Policy":
        return cls.from_yaml(read_policy_file(path), source=path)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> "Policy":
        return parse_policy_yaml(text, source, cls.from_dict)

    @classmethod
    def from_dict(cls, doc: Any, source: str = "<dict>") -> "Policy":
        try:
            return cls._from_dict(doc, source)
        except PolicyError as e:
            raise PolicyError(f"{source}: {e}") from None

    @classmethod
    def _from_dict(cls, doc: Any, source: str) -> "Policy":
        if not isinstance(doc, dict):
            raise PolicyError("the policy must be a mapping with a 'rules' list")
        unknown = set(doc) - _TOP_KEYS
        if unknown:
            raise PolicyError(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
        mode = doc.get("mode", "enforce")
        if mode not in MODES:
            raise PolicyError(f"mode: {mode!r} is not one of {list(MODES)}")
        raw_rules = doc.get("rules", [])
        if raw_rules is None:
            raw_rules = []
        if not isinstance(raw_rules, list):
            raise PolicyError("rules: must be a list")
        rules = [cls._rule(i, r) for i, r in enumerate(raw_rules)]
        deny = (
            _networks(doc["deny_ranges"], "deny_ranges")
            if "deny_ranges" in doc
            else tuple(ipaddress.ip_network(n) for n in DEFAULT_DENY_RANGES)
        )
        allow = _networks(doc.get("allow_ranges", []), "allow_ranges")
        return cls(mode, rules, deny, allow, source)

    @staticmethod
    def _rule(i: int, r: Any) -> Rule:
        where = f"rules[{i}]"
        if not isinstance(r, dict):
            raise PolicyError(f"{where}: must be a mapping with at least 'host'")
        unknown = set(r) - _RULE_KEYS
        if unknown:
            raise PolicyError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_RULE_KEYS)}")
        host = r.get("host")
        if not isinstance(host, str) or not host.strip():
            raise PolicyError(f"{where}.host: required, a hostname, '*.domain' or an IP address")
        wildcard = host.strip().startswith("*.")
        bare = host.strip()[2:] if wildcard else host
        if "*" in bare:
            raise PolicyError(f"{where}.host: {host!r}: only a leading '*.' wildcard is supported")
        try:
            norm = normalize_host(bare)
        except (ValueError, idna.IDNAError) as e:
            raise PolicyError(f"{where}.host: {host!r}: {e}") from None
        if wildcard and is_ip_literal(norm):
            raise PolicyError(f"{where}.host: {host!r}: a wildcard cannot apply to an IP address")
        paths = tuple(_strings(r["paths"], f"{where}.paths")) if "paths" in r else ()
        for p in paths:
            if not p.startswith("/"):
                raise PolicyError(f"{where}.paths: {p!r} must start with '/'")
        methods = frozenset(m.upper() for m in _strings(r["methods"], f"{where}.methods")) if "methods" in r else frozenset()
        for m in methods:
            if not m.isalpha():
                raise PolicyError(f"{where}.methods: {m!r} is not an HTTP method")
        schemes = frozenset(s.lower() for s in _strings(r["schemes"], f"{where}.schemes")) if "schemes" in r else frozenset()
        bad = schemes - set(SCHEMES)
        if bad:
            raise PolicyError(f"{where}.schemes: {sorted(bad)} not in {list(SCHEMES)}")
        namespaces = frozenset(_strings(r["namespaces"], f"{where}.namespaces")) if "namespaces" in r else frozenset()
        splice = _splice(r.get("splice", False), f"{where} ({host})", paths, methods, schemes)
        return Rule(
            i,
            ("*." + norm) if wildcard else norm,
            tuple(normalize_path(p) if p != "/" else p for p in paths),
            methods,
            schemes,
            namespaces,
            splice,
        )

    # -- decisions -----------------------------------------------------------------------------
    def candidates(self, host: str) -> tuple[Rule, ...]:
        """Rules whose host pattern covers ``host`` (already normalised), exact ones first (memoised)."""
        hit = self._candidates.get(host)
        if hit is None:
            if len(self._candidates) > 4096:  # hosts are chosen by clients: keep the memo bounded
                self._candidates.clear()
            hit = self._candidates[host] = tuple(self._find_candidates(host))
        return hit

    def _find_candidates(self, host: str) -> Iterable[Rule]:
        yield from self._exact.get(host, ())
        if is_ip_literal(host):
            return
        rest = host
        while "." in rest:
            rest = rest.split(".", 1)[1]
            yield from self._wild.get(rest, ())

    def has_host(self, host: str) -> bool:
        return next(iter(self.candidates(host)), None) is not None

    def decide(self, host: str, *, method: str, scheme: str, path: str, namespace: str | None = None) -> Decision:
        """Match a request against the allow rules. ``host`` must be normalised."""
        best = self.allowing(host, method, scheme, path, namespace)
        return NO_MATCH if best is None else best.allows

    def allowing(self, host: str, method: str, scheme: str, path: str, namespace: str | None) -> Rule | None:
        """The rule that allows a request (the lowest index whose conditions hold), or None: what
        :meth:`decide` decides, without building or reading a Decision (the per-request path,
        proxy/decision.py)."""
        npath = None  # normalised only when a candidate rule has paths to compare
        best: Rule | None = None
        for rule in self.candidates(host):  # only the rules indexed under this host's names
            if best is not None and rule.index >= best.index:
                continue
            if rule.paths and npath is None:
                npath = normalize_path(path)
            if rule.matches(method, scheme, npath, namespace):
                best = rule
        return best

    def address_denied(self, address: str) -> bool:
        """True when ``address`` is in ``deny_ranges`` and not in ``allow_ranges`` (memoised)."""
        hit = self._denied_cache.get(address)
        if hit is None:
            if len(self._denied_cache) > 65536:
                self._denied_cache.clear()
            hit = self._denied_cache[address] = self._address_denied(address)
        return hit

    def _address_denied(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            mapped = ip.ipv4_mapped
            if any(mapped in n for n in self.allow_ranges):
                return False
            if any(mapped in n for n in self.deny_ranges):
                return True
        if any(ip in n for n in self.allow_ranges):
            return False
        return any(ip in n for n in self.deny_ranges)


if __name__ == "__main__":  # python -m proxy.policy explain ... (proxy/explain.py)
    import sys as _sys

    from proxy.explain import main as _main

    _sys.exit(_main())
