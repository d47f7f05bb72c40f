"""Measuring one configuration: one evaluation run (pipeline), its configuration and result cache (config), quality
metrics, scoring a model piece by piece (blockwise), speed and memory, sweeps of configurations, and the fast CPU
paths (flat convolutions, one stream per core). Benchmark reports against peers (`python -m core bench`) are
core.bench."""
