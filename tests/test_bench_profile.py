"""bench/profile_bench.py's reading of py-spy's raw (collapsed) stacks: the figures the report quotes."""

from bench.profile_bench import analyse, parse_frame, short_location

PROXY = "/repo/proxy/"
RAW = """\
run (/usr/lib/python3.11/asyncio/events.py:78);trigger_event (/v/site-packages/mitmproxy/addonmanager.py:285) 6
run (/usr/lib/python3.11/asyncio/events.py:78);TproxyAddon.request (/repo/proxy/core.py:227);decide (/repo/proxy/decision.py:120) 3
run (/usr/lib/python3.11/asyncio/events.py:78);TproxyAddon.request (/repo/proxy/core.py:227);Headers.get_all (/v/site-packages/mitmproxy/http.py:145) 1
run (/usr/lib/python3.11/asyncio/events.py:78);_wrap.<locals>.read_request_head_keeping_target (/repo/proxy/request_target.py:29);read_request_head (/v/site-packages/mitmproxy/net/http/http1/read.py:70) 2
run (/usr/lib/python3.11/asyncio/events.py:78);_wrap.<locals>.read_request_head_keeping_target (/repo/proxy/request_target.py:29) 1
not a stack line
"""


def test_frames_split_into_name_and_a_short_location():
    assert parse_frame("TproxyAddon.request (/repo/proxy/core.py:227)") == ("TproxyAddon.request", "/repo/proxy/core.py:227")
    assert parse_frame("<module>") == ("<module>", "")
    assert short_location("/v/lib/python3.11/site-packages/mitmproxy/http.py:145") == "mitmproxy/http.py:145"
    assert short_location("/usr/lib/python3.11/asyncio/events.py:78") == "stdlib/events.py:78"


def test_the_addons_share_counts_every_stack_through_proxy_code_once():
    a = analyse(RAW, proxy_dir=PROXY, top=3)
    assert a["samples"] == 13
    # 3 + 1 under the request hook, 1 in the parser wrapper's own code; not the 2 inside mitmproxy's parser
    assert a["addon_share_pct"] == round(100 * 5 / 13, 1)
    assert a["top_self"][0] == ["trigger_event (mitmproxy/addonmanager.py:285)", round(100 * 6 / 13, 1)]
    incl = dict(a["addon_inclusive"])
    assert incl["TproxyAddon.request (/repo/proxy/core.py:227)"] == round(100 * 4 / 13, 1)
    assert incl["decide (/repo/proxy/decision.py:120)"] == round(100 * 3 / 13, 1)
    assert incl["_wrap.<locals>.read_request_head_keeping_target (/repo/proxy/request_target.py:29)"] == round(100 / 13, 1)


def test_no_samples_gives_no_shares_not_a_division_error():
    assert analyse("", proxy_dir=PROXY) == {"samples": 0, "addon_share_pct": None, "top_self": [], "addon_inclusive": []}
