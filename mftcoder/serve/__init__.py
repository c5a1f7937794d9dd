"""`mftcoder serve`: an OpenAI-compatible HTTP API and a web chat on the inference engine."""
