"""The soak's report: the summary of its records, the markdown table, the plot
(`experiments/soak.py`)."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def summarize(soak, samples, start, window, idle, replays) -> dict:
    records = soak.records
    statuses = Counter(f"{r.kind} {r.status}" for r in records)
    windows = []
    for i in range(int(max(s["t"] for s in samples) // window) + 1 if samples else 0):
        done = [r for r in records if i * window <= r.end - start < (i + 1) * window]
        ttft = [r.ttft for r in done if r.ttft is not None]
        gap = [r.gap for r in done if r.gap is not None]
        windows.append(
            {
                "window": i,
                "requests": len(done),
                "ttft_p50": percentile(ttft, 0.5),
                "ttft_p99": percentile(ttft, 0.99),
                "gap_p50": percentile(gap, 0.5),
                "gap_p99": percentile(gap, 0.99),
            }
        )
    after_warm = [s["rss_mb"] for s in samples if s["t"] >= window] or [
        s["rss_mb"] for s in samples
    ]
    server_errors = sum(1 for r in records if isinstance(r.status, int) and r.status >= 500)
    return {
        "requests": len(records),
        "statuses": dict(sorted(statuses.items())),
        "server_errors": server_errors,
        "other_errors": sum(1 for r in records if not isinstance(r.status, int)),
        "lost": sum(r.lost and not r.dropped for r in records),
        "crossed": sum(r.crossed for r in records),
        "dropped_on_purpose": sum(r.dropped for r in records),
        "replays": replays,
        "windows": windows,
        "rss_mb_first": after_warm[0] if after_warm else None,
        "rss_mb_last": after_warm[-1] if after_warm else None,
        "rss_growth": (after_warm[-1] / after_warm[0] - 1) if after_warm else None,
        "rss_mb_max": max((s["rss_mb"] for s in samples), default=None),
        "kv_pages_max": max((s["kv_pages"] for s in samples), default=None),
        "kv_pages_idle": idle.get("kv_pages_used"),
        "chunk_gap_p50_all": statistics.median([r.gap for r in records if r.gap] or [float("nan")]),
    }


def plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    top.plot(t, [s["rss_mb"] for s in samples])
    top.set_ylabel("server RSS (MiB)")
    bottom.plot(t, [s["kv_pages"] for s in samples], label="KV pages used")
    bottom.plot(t, [s["running"] for s in samples], label="running")
    bottom.plot(t, [s["waiting"] for s in samples], label="waiting")
    bottom.set_xlabel("minutes")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(summary: dict) -> str:
    lines = [
        "| window | requests done | TTFT p50 / p99 (s) | chunk gap p50 / p99 (ms) |",
        "|---:|---:|---:|---:|",
    ]
    for w in summary["windows"]:
        lines.append(
            f"| {w['window']} | {w['requests']} | {w['ttft_p50']:.2f} / "
            f"{w['ttft_p99']:.2f} | {1e3 * w['gap_p50']:.0f} / "
            f"{1e3 * w['gap_p99']:.0f} |"
        )
    keys = (
        "requests",
        "server_errors",
        "other_errors",
        "lost",
        "crossed",
        "dropped_on_purpose",
        "replays",
        "rss_mb_first",
        "rss_mb_last",
        "rss_growth",
        "kv_pages_max",
        "kv_pages_idle",
        "compiles_after_warmup",
        "health_after",
    )
    lines += ["", *(f"- {k}: {summary[k]}" for k in keys), "", "statuses:"]
    lines += [f"- {k}: {v}" for k, v in summary["statuses"].items()]
    return "\n".join(lines)
