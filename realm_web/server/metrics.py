"""`GET /metrics`: Prometheus text format (prometheus-client), one registry per server.

Counted by the API as requests end: requests by endpoint and status, prompt / cached prompt / generated tokens,
time to first token and inter-token latency (histograms). Read from each model's engine at scrape time:
waiting and running sequences, KV blocks used / free / total, prefix-cache hit and query tokens and their
ratio, preemptions."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from realm_web.server.pool import ModelPool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class EngineCollector:
    """Gauges and counters read from every loaded model's `engine.stats()` when scraped."""

    def __init__(self, pool: ModelPool):
        self.pool = pool

    def collect(self):
        g = {name: GaugeMetricFamily(f"realm_web_{name}", doc, labels=["model"]) for name, doc in (
            ("sequences_waiting", "Sequences waiting for admission (or preempted)"),
            ("sequences_running", "Sequences holding a slot and KV blocks"),
            ("kv_blocks_used", "KV cache blocks held by sequences"),
            ("kv_blocks_free", "KV cache blocks free (including cached prefix blocks, reusable)"),
            ("kv_blocks_total", "KV cache blocks in the pool"),
            ("kv_blocks_cached", "Free KV blocks still holding a cached prefix"),
            ("prefix_cache_hit_ratio", "Prompt tokens found in the prefix cache / prompt tokens looked up"),
        )}  # fmt: skip
        c = {name: CounterMetricFamily(f"realm_web_{name}", doc, labels=["model"]) for name, doc in (
            ("prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache"),
            ("prefix_cache_query_tokens", "Prompt tokens looked up in the prefix cache"),
            ("preemptions", "Sequences preempted for lack of KV blocks"),
            ("engine_steps", "Engine steps run"),
        )}  # fmt: skip
        for e in self.pool.ready():
            s = e.model.stats()
            gauges = {"sequences_waiting": "waiting", "sequences_running": "running"}
            gauges.update({k: k for k in ("kv_blocks_used", "kv_blocks_free", "kv_blocks_total", "kv_blocks_cached")})
            for name, key in gauges.items():
                g[name].add_metric([e.id], s[key])
            q = s["prefix_cache_query_tokens"]
            g["prefix_cache_hit_ratio"].add_metric([e.id], s["prefix_cache_hit_tokens"] / q if q else 0.0)
            for name, key in (("prefix_cache_hit_tokens", "prefix_cache_hit_tokens"),
                              ("prefix_cache_query_tokens", "prefix_cache_query_tokens"),
                              ("preemptions", "preemptions"), ("engine_steps", "steps")):  # fmt: skip
                c[name].add_metric([e.id], s[key])
        yield from g.values()
        yield from c.values()


class Metrics:
    def __init__(self, pool: ModelPool):
        disable_created_metrics()  # no `_created` series beside every counter (process-wide in prometheus-client)
        self.registry = r = CollectorRegistry()
        self.requests = Counter("realm_web_requests", "API requests by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)  # fmt: skip
        self.prompt_tokens = Counter("realm_web_prompt_tokens", "Prompt tokens of sequences past their prefill",
                                     ["model"], registry=r)  # fmt: skip
        self.cached_tokens = Counter("realm_web_cached_prompt_tokens", "Prompt tokens served from the prefix cache",
                                     ["model"], registry=r)  # fmt: skip
        self.generated_tokens = Counter("realm_web_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram("realm_web_time_to_first_token_seconds", "Time from arrival to the first token",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)  # fmt: skip
        self.itl = Histogram("realm_web_inter_token_latency_seconds", "Time between a sequence's tokens",
                             ["model"], buckets=ITL_BUCKETS, registry=r)  # fmt: skip
        r.register(EngineCollector(pool))

    def render(self) -> bytes:
        return generate_latest(self.registry)
