"""The OpenAI-compatible HTTP server: continuous batching (scheduler), structured output (grammar), the app."""
