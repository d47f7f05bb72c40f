"""Measuring what quantization costs and gains: one evaluation run (pipeline), quality metrics, speed and memory,
the fast CPU paths (flat convolutions, one stream per core), and the side-by-side benchmark (`python -m core bench`)."""
