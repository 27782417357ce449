"""Node agent: NVML/GPM and host (psutil) samplers, the Prometheus scrape target, samples into a bundle.

Modules (import them directly; importing has no side effects):

* ``sampler``: :class:`~bottleneck_map.agent.sampler.Sampler` (fixed-interval thread, ring
  buffer, bundle rows) and ``start_agent_in_process(writer, watch_pid, interval)``.
* ``nvml`` / ``gpm`` / ``host``: the GPU (NVML, GPM) and host (psutil) sources.
* ``sample``: the dataclasses one tick produces and their bundle rows.
* ``collector`` / ``names`` / ``server``: ``/metrics`` in Prometheus or dcgm-exporter naming,
  over HTTP(S) with optional basic auth.
* ``cli``: ``bottleneck-map agent``.

See ``docs/agent.md``.
"""
