"""Quantized models as they are used: by id for the playground and the API, the engines that run them
(continuous batching for text, the vision lane, the model pool), prompts, sampling, scoring and constrained
decoding, and folders other tools load (export)."""
