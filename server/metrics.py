"""``/metrics``: the relay's counters in the Prometheus text exposition format (0.0.4).

Only counts and gauges: no cell ids, names, keys, tokens or addresses ever appear here, so the
endpoint may be scraped by monitoring that is not trusted with the directory. Every series is
per node (``liaison_node_info`` carries the node's random id for telling nodes apart).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .relay import Relay

__all__ = ["METRICS_TYPE", "Histogram", "render_metrics"]

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds an envelope waited in the relay before it was delivered (queue age at delivery).
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0, 86400.0)
#: Items per group commit.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Seconds per group commit (fsync included).
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)


class Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out += [f"{name}_sum {self.sum}", f"{name}_count {self.count}"]
        return out


def render_metrics(relay: Relay, queues: Mapping[int, tuple[int, float]] | None = None) -> str:
    """The exposition text for ``relay``'s current counters; ``queues`` maps a precedence
    (0 = FLASH .. 3 = ROUTINE) to ``(envelopes queued, age of the oldest in seconds)``."""
    m, w, bus = relay.metrics, relay.writer.stats, relay.bus
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, value: float, labels: str = "") -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{labels} {value}")

    metric("liaison_node_info", "gauge", "This relay node.", 1, f'{{node="{relay.node}"}}')
    metric("liaison_links", "gauge", "Authenticated cell links open now.", len(relay.hub))
    metric("liaison_links_total", "counter", "Cell links authenticated.", m.connections)
    handshakes = relay.handshakes.in_handshake
    metric("liaison_unauthenticated", "gauge", "Links in the handshake.", handshakes)
    metric("liaison_envelopes_accepted_total", "counter", "Envelopes stored.", m.accepted)
    metric("liaison_envelopes_duplicate_total", "counter", "Resends stored once.", m.duplicates)
    metric("liaison_envelopes_delivered_total", "counter", "DELIVER frames sent.", m.delivered)
    metric("liaison_envelopes_acked_total", "counter", "ACKs received.", m.acked)
    metric("liaison_envelopes_expired_total", "counter", "Envelopes purged here.", m.expired)
    lines.append("# HELP liaison_refused_total Requests refused, by wire error code.")
    lines.append("# TYPE liaison_refused_total counter")
    for code, count in sorted(m.refused.items()):
        lines.append(f'liaison_refused_total{{code="{code}"}} {count}')
    metric("liaison_writer_batches_total", "counter", "Group commits.", w.batches)
    metric("liaison_writer_rows_total", "counter", "Items committed.", w.rows)
    metric("liaison_writer_failed_batches_total", "counter", "Failed commits.", w.failed_batches)
    metric("liaison_writer_max_batch", "gauge", "Largest batch committed.", w.max_batch_size)
    metric("liaison_writer_pending", "gauge", "Items waiting for a commit.", relay.writer.pending)
    metric("liaison_bus_connected", "gauge", "1 if the bus is connected.", int(bus.connected))
    metric("liaison_bus_published_total", "counter", "Hints published.", bus.published)
    metric("liaison_bus_received_total", "counter", "Hints from other nodes.", bus.received)
    metric("liaison_bus_failures_total", "counter", "Bus errors (covered by polls).", bus.failures)
    metric("liaison_fallback_polls_total", "counter", "Fallback store polls.", relay.polls)
    metric("liaison_expiry_sweeper", "gauge", "1 if this node runs the sweep.", int(relay.sweeper))
    histograms = (
        ("liaison_delivery_wait_seconds", "Time envelopes waited in the relay until delivered.",
         relay.metrics.delivery_wait),
        ("liaison_commit_batch_items", "Items per group commit.", relay.metrics.batch_items),
        ("liaison_commit_seconds", "Duration of a group commit (fsync included).",
         relay.metrics.commit_seconds),
    )  # fmt: skip
    for name, help_, histogram in histograms:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram", *histogram.lines(name)]
    if queues is not None:
        names = ("flash", "immediate", "priority", "routine")
        lines += ["# HELP liaison_queue_depth Envelopes queued (all cells), by precedence.",
                  "# TYPE liaison_queue_depth gauge"]  # fmt: skip
        lines += [f'liaison_queue_depth{{precedence="{n}"}} {queues.get(i, (0, 0.0))[0]}'
                  for i, n in enumerate(names)]  # fmt: skip
        lines += ["# HELP liaison_queue_oldest_seconds Age of the oldest queued envelope.",
                  "# TYPE liaison_queue_oldest_seconds gauge"]  # fmt: skip
        lines += [f'liaison_queue_oldest_seconds{{precedence="{n}"}} {queues.get(i, (0, 0.0))[1]}'
                  for i, n in enumerate(names)]  # fmt: skip
    return "\n".join(lines) + "\n"
