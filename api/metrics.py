"""Prometheus metrics of one app (its own CollectorRegistry): requests, latencies, engine stats."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Engine stats that only grow are exported as counters, the rest as gauges.
_COUNTERS = frozenset(
    {
        "num_steps",
        "num_finished",
        "num_preemptions",
        "prompt_tokens",
        "generated_tokens",
        "cached_tokens",
        "draft_tokens",
        "accepted_draft_tokens",
    }
)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


# model id -> that model's engine stats
ModelStats = Callable[[], Mapping[str, Mapping[str, float]]]


class _EngineCollector(Collector):
    """Each loaded model's engine stats, labelled by model."""

    def __init__(self, stats: ModelStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        by_model = self._stats()
        keys = sorted({key for stats in by_model.values() for key in stats})
        for key in keys:
            name = f"jaxserve_engine_{key}"
            if key in _COUNTERS:
                family = CounterMetricFamily(name, f"engine {key} (total)", labels=["model"])
            else:
                family = GaugeMetricFamily(name, f"engine {key}", labels=["model"])
            for model, stats in sorted(by_model.items()):
                if key in stats:
                    family.add_metric([model], stats[key])
            yield family


class Metrics:
    """Request counts by route and status, request latency, time to first token, token counts."""

    def __init__(self, stats: ModelStats) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "jaxserve_http_requests",
            "HTTP requests answered",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "jaxserve_http_request_duration_seconds",
            "Time from request to the end of the response",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "jaxserve_time_to_first_token_seconds",
            "Time from request to its first generated text, as the front sees it",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "jaxserve_tokens",
            "Tokens served, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(stats))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.tokens.labels(kind="prompt").inc(prompt)
        self.tokens.labels(kind="completion").inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)
