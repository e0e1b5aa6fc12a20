"""One ``/metrics`` per node: the workers' metrics, scraped and summed at each scrape.

Each worker serves its own registry on a private loopback port; the supervisor's collector reads
them all when Prometheus scrapes the node port and reports one family per metric: counters,
histograms (buckets, sums, counts) and the request/connection counters are summed over the
workers; the families that describe the shared configuration are the maximum, since every worker
loads the same policy file and watches the same namespace policies (summing would multiply them by
N): the gauges of what is in force (rules, mode, namespace policies) and the counters of events each
worker sees once per change (policy loads, namespace policies rejected). A worker that
does not answer is left out of that scrape and counted in ``tproxy_worker_scrape_errors_total``.
"""

from __future__ import annotations

import urllib.request
from typing import Callable, Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

SHARED_CONFIG = {
    "tproxy_policy_rules",
    "tproxy_policy_mode",
    "tproxy_namespace_policies",
    "tproxy_policy_reloads",
    "tproxy_namespace_policy_rejections",
}
SCRAPE_TIMEOUT = 2.0


def scrape(port: int, timeout: float = SCRAPE_TIMEOUT) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return r.read().decode()


def merge(texts: Iterable[str]) -> list[Metric]:
    """The metric families of several exposition texts, samples of equal name and labels combined."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name.startswith(("python_", "process_")):
                continue  # per process, meaningless summed
            families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type, fam.unit))
            acc = values.setdefault(fam.name, {})
            take_max = fam.name in SHARED_CONFIG
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key not in acc:
                    acc[key] = s.value
                elif s.name.endswith("_created"):
                    acc[key] = min(acc[key], s.value)  # the family exists since its first worker made it
                elif take_max:
                    acc[key] = max(acc[key], s.value)
                else:
                    acc[key] += s.value
    for name, fam in families.items():
        fam.samples = [Sample(sname, dict(labels), value) for (sname, labels), value in values[name].items()]
    return list(families.values())


class SummingCollector:
    """A prometheus_client collector over the workers' metrics ports (``ports()``, read per scrape)."""

    def __init__(self, ports: Callable[[], list[int]], on_error: Callable[[int, Exception], None]):
        self.ports = ports
        self.on_error = on_error

    def collect(self):
        texts = []
        for port in self.ports():
            try:
                texts.append(scrape(port))
            except (OSError, ValueError) as e:
                self.on_error(port, e)
        yield from merge(texts)
