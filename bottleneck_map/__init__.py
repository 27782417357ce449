"""bottleneck-map: which constraint holds LLM inference latency back, when, for which requests, and what to change."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bottleneck-map")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
