"""Quantized models as they are used: by id for the playground and the API, how they answer (generation,
classification), and as folders other tools load (export)."""
