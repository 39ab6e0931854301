"""edgellm: run large language models on memory-limited edge devices."""

__version__ = "0.1.0"
