"""Ingest from external servers: the OTLP receiver, Prometheus pulls, ``collect`` and ``fleet``."""
