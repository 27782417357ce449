"""Analyzer: turns a trace bundle into the bottleneck map (stages, latency metrics, roofline, verdicts)."""
