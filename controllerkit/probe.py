"""The interception probe contract, shared by the sidecar (asks) and the proxy addon (answers).

It lives in the shared kit, not in either side, so that neither image package imports the other
(standard library only: the sidecar image carries it).

A locked pod proves that its node redirects its web traffic to the tproxy proxy before the app
starts: it sends ``GET http://PROBE_ADDRESS/PROBE_PATH`` with ``Host: PROBE_HOST`` and a random
nonce in ``NONCE_HEADER``. Only the tproxy proxy answers it (status 200, the nonce echoed in
``ANSWER_HEADER``); it never forwards the probe anywhere. ``PROBE_ADDRESS`` is in TEST-NET-1
(RFC 5737), which is never routed, so without interception the probe goes nowhere.
"""

PROBE_ADDRESS = "192.0.2.1"
PROBE_PORT = 80
PROBE_HOST = "probe.tproxy.invalid"
PROBE_PATH = "/.tproxy/probe"
NONCE_HEADER = "X-Tproxy-Probe-Nonce"
ANSWER_HEADER = "X-Tproxy-Probe"
