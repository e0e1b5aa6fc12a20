"""tproxy proxy: the teapot-blocking mitmproxy addon (policy, no-bypass enforcement, audit, metrics).

mitmdump loads ``proxy/addon.py`` by path; the code lives in ``proxy.core`` (the addon),
``proxy.policy`` (the indexed policy), ``proxy.identity`` (podwatch's pod identity file) and
``proxy.metrics``. See proxy/README.md.
"""
