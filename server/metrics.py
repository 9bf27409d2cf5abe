"""``/metrics``: the relay's counters in the Prometheus text exposition format (0.0.4).

Only counts and gauges: no cell ids, names, keys, tokens or addresses ever appear here, so the
endpoint may be scraped by monitoring that is not trusted with the directory. Every series is
per node (``liaison_node_info`` carries the node's random id for telling nodes apart).
"""

from __future__ import annotations

from .relay import Relay

__all__ = ["METRICS_TYPE", "render_metrics"]

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_metrics(relay: Relay) -> str:
    """The exposition text for ``relay``'s current counters."""
    m, w, bus = relay.metrics, relay.writer.stats, relay.bus
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, value: float, labels: str = "") -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{labels} {value}")

    metric("liaison_node_info", "gauge", "This relay node.", 1, f'{{node="{relay.node}"}}')
    metric("liaison_links", "gauge", "Authenticated cell links open now.", len(relay.hub))
    metric("liaison_links_total", "counter", "Cell links authenticated.", m.connections)
    metric("liaison_unauthenticated", "gauge", "Links in the handshake.", relay.unauthenticated)
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
    return "\n".join(lines) + "\n"
