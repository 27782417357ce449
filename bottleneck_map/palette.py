"""The colours every view shares, so a class looks the same in the dashboard and the HTML report:
one per bottleneck class, stage group, step phase and workload class."""

from __future__ import annotations

CLASS_COLORS: dict[str, str] = {
    "queueing": "#E45756",
    "kv_cache_capacity": "#F58518",
    "prefill_compute": "#4C78A8",
    "decode_memory_bandwidth": "#2A9D8F",
    "decode_compute": "#17BECF",
    "pcie_transfer": "#B279A2",
    "host_overhead": "#FF9DA6",
    "tokenization": "#9D755D",
    "streaming": "#54A24B",
    "power_thermal": "#EECA3B",
    "balanced": "#9AA0A6",
}
NO_CLASS_COLOR = "#D5D8DC"

# Stage groups in the order latency flows through them.
GROUP_COLORS: dict[str, str] = {
    "tokenize": "#9D755D",
    "queue": "#E45756",
    "prefill": "#4C78A8",
    "decode": "#2A9D8F",
    "streaming": "#54A24B",
}
PHASE_COLORS: dict[str, str] = {"prefill": "#4C78A8", "decode": "#2A9D8F", "mixed": "#B279A2", "all": "#333333"}
WORKLOAD_COLORS: list[str] = ["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#9D755D", "#2A9D8F"]
INK = "#1f2933"  # text and the roof line

__all__ = ["CLASS_COLORS", "GROUP_COLORS", "INK", "NO_CLASS_COLOR", "PHASE_COLORS", "WORKLOAD_COLORS"]
