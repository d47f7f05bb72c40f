"""Turning measured rows into what people read: the result table and CSV, summaries, charts, the lab's status,
and the demo sweep."""
