"""Turning measured rows into what people read: one vocabulary for precision, intervals and memory (labels), the
result table and CSV, tables as the pages show them, summaries, the per-backend "why" beside a slower quantized
model, charts, the lab's status and first-run note, and the demo sweep."""
