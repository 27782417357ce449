"""A node agent's (or dcgm-exporter's) ``/metrics`` page -> GPU samples rows, for ``collect --scrape-agent``.

Either naming scheme the agent serves is read: its own (``bmap_gpu_*``, base units, label
``gpu_model``) or dcgm-exporter's (``DCGM_FI_*``, percent/MiB/MHz, label ``modelName``), so a
dcgm-exporter can be scraped the same way. One row per GPU (label ``gpu``), in the samples
columns of :data:`~bottleneck_map.agent.names.GPU_METRICS` that are gauges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from bottleneck_map.agent.names import GPU_METRICS
from bottleneck_map.ingest.vllm_series import ExpositionError
from bottleneck_map.schema import SAMPLES

_COLUMNS = set(SAMPLES.names)
# sample name -> (column, factor from the exposed unit to the base unit)
_BY_NAME: dict[str, tuple[str, float]] = {}
for _m in GPU_METRICS:
    if _m.kind != "gauge" or _m.field not in _COLUMNS or _m.field.startswith("proc_"):
        continue
    _BY_NAME[_m.prom] = (_m.field, 1.0)
    if _m.dcgm:
        _BY_NAME.setdefault(_m.dcgm, (_m.field, 1.0 / _m.dcgm_scale))


@dataclass
class GpuPage:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # GPU index -> columns
    models: dict[str, str] = field(default_factory=dict)  # GPU index -> model name


def gpu_rows(text: str) -> GpuPage:
    """The GPU columns of one page by GPU index, and each GPU's model name; raises ExpositionError."""
    page = GpuPage()
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                hit = _BY_NAME.get(s.name)
                gpu = s.labels.get("gpu")
                if hit is None or gpu is None or not math.isfinite(s.value):
                    continue
                column, factor = hit
                page.rows.setdefault(gpu, {})[column] = s.value * factor
                name = s.labels.get("gpu_model") or s.labels.get("modelName")
                if name:
                    page.models[gpu] = name
    except (ValueError, TypeError, IndexError) as exc:
        raise ExpositionError(f"not Prometheus text exposition: {exc}") from None
    return page
