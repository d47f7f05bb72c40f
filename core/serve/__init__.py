"""The OpenAI-compatible HTTP API: app wiring and the request guard, routes (health, metrics, models, classify),
chat and text completions on the text engine, tool calls and response formats, request schemas, the OpenAI wire
format, Prometheus metrics, and a bounded load test. The engines themselves are in core.deploy."""
