"""``collect --scrape URL``: read a vLLM server's own ``/metrics`` every interval into samples
(and ``--scrape-agent URL``: a node agent's GPU series the same way).

No Prometheus server is needed for one instance. Each scrape becomes one samples row
(``source`` ``scrape:vllm``, ``instance`` the URL's ``host:port``, as Prometheus labels a
target) with the columns of :data:`~bottleneck_map.ingest.vllm_series.ENGINE_SERIES` and the
inter-token-latency histogram. Once, and again until they answer, the scraper reads what the
server says of itself: the served model (``/v1/models``; its ``config.json`` when the model's
``root`` is a readable directory here) and the cache config (``vllm:cache_config_info``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bottleneck_map.bundle import BundleWriter
from bottleneck_map.ingest.agent_series import gpu_rows
from bottleneck_map.ingest.vllm_series import ITL_BUCKETS_COLUMN, SOURCE, ExpositionError, row_from_exposition

log = logging.getLogger(__name__)
# A page larger than this is refused (vLLM's is about 60 kB per engine).
MAX_PAGE_BYTES = 16 * 1024 * 1024
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "int8": 1}


def instance_of(url: str) -> str:
    """``host:port`` of a URL, the ``instance`` label Prometheus would give the target."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def metrics_url(url: str) -> str:
    """The ``/metrics`` URL of a server given by its base URL (or its metrics URL itself)."""
    u = url.rstrip("/")
    return u if u.endswith("/metrics") else u + "/metrics"


def model_meta(config: dict[str, Any], name: str | None, dtype: str | None = None) -> dict[str, Any]:
    """``meta["model"]`` from a Hugging Face ``config.json`` (the keys the roofline reads)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    cfg = {**config, **text}
    dt = str(dtype or cfg.get("dtype") or cfg.get("torch_dtype") or "float16").removeprefix("torch.")
    keys = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
    )
    out: dict[str, Any] = {k: cfg[k] for k in keys if k in cfg}
    archs = cfg.get("architectures") or []
    out.update(name=name, architecture=archs[0] if archs else None, dtype=dt)
    if dt in _DTYPE_BYTES:
        out["dtype_bytes"] = _DTYPE_BYTES[dt]
    return out


def read_model_config(path: str | Path) -> dict[str, Any]:
    """A ``config.json`` (or the directory holding it); raises ValueError naming the file and why."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the model config {p}: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{p} is not a JSON object")
    return doc


@dataclass
class Scraper:
    """Scrapes ``url`` every ``interval_s`` on a thread of its own; rows go to ``writer``."""

    writer: BundleWriter
    url: str
    interval_s: float = 1.0
    timeout_s: float = 5.0
    model_config: dict[str, Any] | None = None  # given with --model-config; else read via /v1/models
    dtype: str | None = None
    kind: str = "vllm"  # "vllm" (an engine's /metrics) or "agent" (a node agent's or dcgm-exporter's)
    scrapes: int = 0
    failures: int = 0
    last_error: str | None = None
    itl_bounds_s: tuple[float, ...] = ()
    cache_config: dict[str, str] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    gpu_models: dict[str, str] = field(default_factory=dict)  # GPU index -> model name (agent pages)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _client: httpx.Client | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("vllm", "agent"):
            raise ValueError(f"unknown scrape kind {self.kind!r}")
        if self.interval_s <= 0:
            raise ValueError(f"scrape interval must be > 0 s, got {self.interval_s}")
        self.instance = instance_of(self.url)

    def start(self) -> Scraper:
        self._client = httpx.Client(timeout=self.timeout_s)
        self._thread = threading.Thread(target=self._loop, name=f"scrape-{self.instance}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after one last scrape (so the final counters cover the whole run)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.scrape_once()
        if self._client is not None:
            self._client.close()

    def _loop(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            self.scrape_once()
            deadline += self.interval_s
            now = time.monotonic()
            if deadline < now:  # fell behind (a slow server): skip the missed ticks
                deadline = now + self.interval_s
            self._stop.wait(deadline - now)

    def scrape_once(self) -> bool:
        """One scrape; a failure is counted and logged once per kind, never raised."""
        client = self._client or httpx.Client(timeout=self.timeout_s)
        try:
            ts = time.time_ns()
            resp = client.get(metrics_url(self.url))
            if resp.status_code != 200:
                raise ExpositionError(f"HTTP {resp.status_code}")
            if len(resp.content) > MAX_PAGE_BYTES:
                raise ExpositionError(f"page of {len(resp.content)} bytes exceeds {MAX_PAGE_BYTES}")
            if self.kind == "agent":
                self._agent_rows(ts, resp.text)
            else:
                self._engine_row(ts, resp.text, client if client is self._client else None)
        except (httpx.HTTPError, ExpositionError) as exc:
            self._failed(f"{metrics_url(self.url)}: {exc}")
            return False
        finally:
            if client is not self._client:
                client.close()
        self.scrapes += 1
        return True

    def _engine_row(self, ts: int, text: str, client: httpx.Client | None) -> None:
        page = row_from_exposition(text)
        row: dict[str, Any] = {"ts_ns": ts, "source": f"scrape:{SOURCE}", "device": None, "instance": self.instance}
        row.update(page.columns)
        if page.itl_buckets:
            row[ITL_BUCKETS_COLUMN] = list(page.itl_buckets)
            self.itl_bounds_s = page.itl_bounds_s
        if page.cache_config and not self.cache_config:
            self.cache_config = page.cache_config
        self.writer.extend("samples", [row])
        if not self.model:
            self._read_model(client, page.model_names)

    def _agent_rows(self, ts: int, text: str) -> None:
        page = gpu_rows(text)
        rows = []
        for gpu, cols in sorted(page.rows.items()):
            row: dict[str, Any] = {"ts_ns": ts, "source": "scrape:agent", "device": gpu, "instance": self.instance}
            row.update(cols)
            if "clock_event_reasons" in row:
                row["clock_event_reasons"] = int(row["clock_event_reasons"])
            rows.append(row)
        if rows:
            self.writer.extend("samples", rows)
        self.gpu_models.update(page.models)

    def _failed(self, why: str) -> None:
        self.failures += 1
        if why != self.last_error:
            log.warning("scrape failed: %s", why)
        self.last_error = why

    def _read_model(self, client: httpx.Client | None, names: tuple[str, ...]) -> None:
        name, root = (names[0] if names else None), None
        try:
            http = client or httpx.Client(timeout=self.timeout_s)
            try:
                doc = http.get(self.url.rstrip("/").removesuffix("/metrics") + "/v1/models").json()
            finally:
                if client is None:
                    http.close()
            first = (doc.get("data") or [{}])[0]
            name, root = first.get("id") or name, first.get("root")
        except (httpx.HTTPError, ValueError, AttributeError, IndexError, TypeError):
            pass  # not an OpenAI server, or not yet: the model name from the metrics' labels stands
        config = self.model_config
        if config is None and root:
            try:
                config = read_model_config(root)
            except ValueError:
                config = None  # the root is not readable here (another host, a hub id)
        self.model = model_meta(config, name, self.dtype) if config else {"name": name} if name else {}

    def meta(self) -> dict[str, Any]:
        """What collect records of this target in ``meta.ingest.scrape``."""
        return {
            "url": metrics_url(self.url),
            "kind": self.kind,
            "instance": self.instance,
            "interval_s": self.interval_s,
            "scrapes": self.scrapes,
            "failures": self.failures,
            "last_error": self.last_error,
            "itl_bounds_s": list(self.itl_bounds_s),
            "cache_config": self.cache_config,
        }

    def device_meta(self) -> dict[str, Any]:
        """``meta["device"]`` from an agent's GPU model names (the first GPU's; the peak table keys on it)."""
        if not self.gpu_models:
            return {}
        names = sorted(set(self.gpu_models.values()))
        first = self.gpu_models[min(self.gpu_models, key=lambda g: int(g) if g.isdigit() else 0)]
        out: dict[str, Any] = {"kind": "gpu", "name": first, "count": len(self.gpu_models)}
        if len(names) > 1:
            out["names"] = names
        return out

    def engine_meta(self) -> dict[str, Any]:
        """``meta["engine"]`` fields the cache config states (block size, KV blocks, prefix caching)."""
        c = self.cache_config
        # vLLM's v1 engine always schedules prompts in chunks (its scheduler config is not exported)
        out: dict[str, Any] = {"name": "vllm", "chunked_prefill": True}
        for key, src in (("block_size", "block_size"), ("num_kv_blocks", "num_gpu_blocks")):
            try:
                out[key] = int(c[src])
            except (KeyError, ValueError):
                pass
        if "enable_prefix_caching" in c:
            out["enable_prefix_caching"] = c["enable_prefix_caching"] == "True"
        return out
