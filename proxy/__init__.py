"""tproxy proxy: the teapot-blocking mitmproxy addon (policy, no-bypass enforcement, audit, metrics).

mitmdump loads ``proxy/addon.py`` by path; ``proxy.core`` wires mitmproxy's hooks to one module per
concern: ``proxy.decision`` (the pure decision), ``proxy.audit`` (the audit writer), ``proxy.pinning``
(approved connections only, at checked addresses), ``proxy.mitm`` (every use of mitmproxy internals),
``proxy.policy`` and ``proxy.policy_watch``, ``proxy.options``, ``proxy.trust``, ``proxy.dns``,
``proxy.clients``, ``proxy.identity``, ``proxy.probe_answer``, ``proxy.health``, ``proxy.metrics``.
See proxy/README.md.
"""
