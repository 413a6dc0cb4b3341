"""apr serve: an OpenAI-compatible HTTP server over the apr engine, with continuous batching."""
