"""Merge the frontier reports of several runs on one machine (bench sections run side by side, or a run that a
device's time limit split into parts) into one report: every measured row once (the first run's, in the order
given), "not measured" rows only for subjects no run measured. Usage: python scripts/merge_frontier.py OUT_STEM RUN.csv [RUN.csv ...]
(writes OUT_STEM.csv and OUT_STEM.md)."""
import csv
import sys
from pathlib import Path


def merge(paths: list[Path]) -> list[dict]:
    measured, missing, seen = [], {}, set()
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["variant"] == "not measured":
                    missing.setdefault(row["subject"], row)
                    continue
                protocol = row["note"].partition("; ")[2] if row["variant"] != "bits/weight" else ""
                key = (row["subject"], row["variant"], protocol)
                if key not in seen:
                    seen.add(key)
                    measured.append(row)
    done = {r["subject"] for r in measured}
    return measured + [r for s, r in missing.items() if s not in done]


def main() -> None:
    out, paths = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    rows = merge(paths)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Frontier: {out.name}", "", "Merged by `python scripts/merge_frontier.py` from "
             f"{len(paths)} reports: " + ", ".join(p.parent.name + "/" + p.name for p in paths),
             "", "| section | subject | variant | value | unit | note |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['section']} | {r['subject']} | {r['variant']} | {float(r['value']):.4g} | {r['unit']} | {r['note']} |"
              for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
