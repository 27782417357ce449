"""Node agent: NVML/GPM and host (psutil) samplers, the Prometheus scrape target, samples into a bundle."""
