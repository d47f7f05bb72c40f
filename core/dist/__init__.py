"""Runs across processes and machines on MLX's own distributed engine (`mx.distributed`), started by `mlx.launch`.

group.py finds the group a launcher made (or none) and shares one host's cores among its ranks; collect.py moves
results between ranks (one slice of the items each, assembled with `all_sum`; JSON rows gathered on rank 0)."""
