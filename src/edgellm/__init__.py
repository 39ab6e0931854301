"""edgellm: run large language models on memory-limited edge devices."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LLM", "load"]

if TYPE_CHECKING:
    from .api import LLM, load


def __getattr__(name: str) -> Any:
    # Lazy: `import edgellm` stays cheap for the CLI and for tools that only read files.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgellm' has no attribute {name!r}")
