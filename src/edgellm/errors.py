"""User-facing errors. Each message says where, what was expected, what was found, and what to do."""


class EdgeLLMError(Exception):
    """Base of every error a user can cause; the CLI prints it as one line."""


class FormatError(EdgeLLMError):
    """A file is not what it claims to be (bad magic, truncated, lying header)."""


class UnsupportedError(EdgeLLMError):
    """Valid input that edgellm does not handle (yet); the message lists what is supported."""


class ConfigError(EdgeLLMError):
    """Bad settings or arguments: unknown model name, prompt longer than the context, bad flag value."""


class ModelNotFoundError(ConfigError):
    """A model name, path or URI that resolves to nothing."""


class BudgetError(EdgeLLMError):
    """A request that does not fit the memory or context budget."""


class PullError(EdgeLLMError):
    """A model could not be fetched: pip or the Hugging Face hub failed, or the disk is full."""
