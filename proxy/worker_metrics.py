"""One ``/metrics`` per node: the workers' metrics, scraped and summed at each scrape.

Each worker serves its own registry on a private loopback port; the supervisor's collector reads
them all when Prometheus scrapes the node port and reports one family per metric: counters,
histograms (buckets, sums, counts) and the request/connection counters are summed over the
workers; gauges that describe the shared configuration (rules in force, the policy mode) are the
maximum, since every worker holds the same policy (summing would multiply them). A worker that
does not answer is left out of that scrape and counted in ``tproxy_worker_scrape_errors_total``.
"""
from __future__ import annotations

import urllib.request
from typing import Callable, Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

MAX_GAUGES = {"tproxy_policy_rules", "tproxy_policy_mode"}
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
            take_max = fam.type == "gauge" and fam.name in MAX_GAUGES
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key in acc and take_max:
                    acc[key] = max(acc[key], s.value)
                elif key in acc and not s.name.endswith("_created"):
                    acc[key] += s.value
                elif key not in acc:
                    acc[key] = s.value
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
