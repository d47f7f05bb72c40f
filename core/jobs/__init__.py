"""Durable background jobs: every run (evaluation, sweep, sensitivity table, export, training) is a record on disk
(core.jobs.store) that a worker process (core.jobs.worker) executes, so a run outlives the page or the terminal
that asked for it and its state can be read by anyone."""
