"""The OpenAI-compatible HTTP API: app wiring, routes, request schemas, the OpenAI wire format, the serving
engine (model pool and worker), Prometheus metrics, and a bounded load test."""
