"""A node's Prometheus metrics: one scrape, parsed by ``prometheus_client``'s parser.

The adapter says where a client serves them (``ClientAdapter.metrics_url``); a sample
with labels is keyed as Prometheus writes it, ``name{label="value",...}``, so one flat
``dict[str, float]`` serves every client.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from ._rpc import RPCError

__all__ = ["parse_metrics", "scrape"]


def scrape(url: str, *, timeout: float = 2.0) -> dict[str, float]:
    """Every sample at ``url``; ``RPCError`` when the endpoint does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        raise RPCError(f"metrics at {url}: {exc}") from exc
    try:
        return parse_metrics(text)
    except ValueError as exc:
        raise RPCError(f"metrics at {url}: not Prometheus text: {exc}") from exc


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = float(sample.value)
            else:
                samples[sample.name] = float(sample.value)
    return samples
