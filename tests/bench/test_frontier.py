"""The frontier bench (core/bench/frontier): the lab's and mlx-lm's recipes scored on the same windows against
the same float32 reference, the journal that lets a stopped run resume, and the ecosystem table and chart
(core/report/ecosystem.py) built from the rows the bench writes."""
import csv
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from conftest import needs_mirror
from core.report import ecosystem


@pytest.fixture(scope="module")
def two_views(smollm2_dir):
    from core.bench.frontier.protocol import protocol
    return protocol(2, compare=1)


@needs_mirror
def test_lab_and_mlx_lm_recipes_on_the_same_views_and_the_journal_resumes(two_views, tmp_path):
    from core.bench.frontier import lab_recipes, mlx_lm_recipes
    from core.bench.frontier.protocol import Journal

    assert [len(v.windows) for v in two_views.views] == [2, 1]
    assert "2 evenly spread, of 592" in two_views.views[0].where
    book = Journal(tmp_path / "j.jsonl", two_views)
    lab = lab_recipes.measure(two_views, book, [dict(bits=4, group_size=64), dict(bits=8, group_size=64)])
    peer = {m.recipe: m for m in mlx_lm_recipes.measure(two_views, book, mlx_lm_recipes.RECIPES[:2])
            if m.view == two_views.views[0].key}
    q4, q8 = (m for m in lab if m.view == two_views.views[0].key)
    # 4 bits + two 16-bit numbers per group of 64 (+ the float32 norms): the same storage in both tools
    assert q4.bpw == pytest.approx(4.5, abs=0.02) and peer["convert 8-bit g64"].bpw == pytest.approx(q8.bpw, abs=0.01)
    assert 0 < q8.kl < q4.kl and q8.ppl < q4.ppl and np.isfinite(q4.ppl_se)
    assert 0 <= peer["float16 (no quantization)"].kl < q8.kl < peer["convert 8-bit g64"].kl * 10
    again = Journal(tmp_path / "j.jsonl", two_views)
    resumed = lab_recipes.measure(two_views, again, [dict(bits=4, group_size=64)])
    assert [asdict(m) for m in resumed] == [asdict(m) for m in lab[:2]]  # read back, not measured again


@needs_mirror
def test_a_recipe_that_fails_is_reported_and_the_others_go_on(two_views):
    from core.bench.frontier import lab_recipes
    from core.bench.frontier.protocol import Journal

    book = Journal(None, two_views)
    out = lab_recipes.measure(two_views, book, [dict(bits=7, group_size=64), dict(bits=8, group_size=32)])
    failed = [m for m in out if m.error]
    assert len(failed) == 2 and "7" in failed[0].error and all(m.kl > 0 for m in out if not m.error)
    assert book.done("lab q8g32") and not book.records.get((two_views.views[0].key, "lab {'bits': 7"))


def _report(tmp_path, rows):
    path = tmp_path / "cpu-x.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["section", "subject", "variant", "value", "unit", "note"])
        writer.writerows(rows)
    return path.parent


def test_ecosystem_frame_pairs_each_score_with_its_protocol_and_the_budget_table_judges_by_tool(tmp_path):
    where = "WikiText-2 raw test, all 592 chunks; cpu"
    rows = []
    for subject, bpw, kl in (("lab q4g32", 5.0, 0.07), ("lab q3g64", 3.5, 1.1), ("llama.cpp Q4_K_M", 6.2, 0.06),
                             ("llama.cpp Q4_0", 5.3, 0.29), ("mlx-lm convert 4-bit g64", 4.5, 0.44)):
        rows += [["frontier", subject, "bits/weight", bpw, "bits", "as stored"],
                 ["frontier", subject, "perplexity", 20 + 10 * kl, "PPL", f"± 0.2; {where}"],
                 ["frontier", subject, "KL", kl, "nats/token", f"± 0.001; {where}"]]
    rows.append(["frontier", "llama.cpp", "not measured", "nan", "", "not installed"])
    df = ecosystem.frontier_frame(_report(tmp_path, rows))
    assert len(df) == 5 and set(df["protocol"]) == {"WikiText-2 raw test, all 592 chunks"}
    assert set(df["backend"]) == {"cpu"} and df.set_index("recipe").loc["Q4_0", "bpw"] == 5.3
    assert list(ecosystem.pareto(df[df["tool"] == "lab"], "kl")["recipe"]) == ["q3g64", "q4g32"]
    table = ecosystem.budget_table(df, budgets=(3.5, 5.0, 6.5)).set_index("budget (bits/weight)")
    assert table.loc[3.5, "llama.cpp"] == "nothing this small" and table.loc[3.5, "lab loses least"] == "—"
    assert table.loc[5.0, "lab"].startswith("q4g32") and table.loc[5.0, "lab loses least"] == "yes"
    assert table.loc[6.5, "llama.cpp"].startswith("Q4_K_M") and table.loc[6.5, "lab loses least"] == "no"
    fig = ecosystem.ecosystem_chart(df, "kl")
    assert [t.name for t in fig.data] == ["lab", "mlx-lm", "llama.cpp", "the lab's Pareto frontier"]
    assert fig.layout.yaxis.type == "log"


def test_the_committed_frontier_reports_parse():
    df = ecosystem.frontier_frame()
    assert not df.empty and set(df["tool"]) <= set(ecosystem.TOOLS)
    assert (df["bpw"] > 2).all() and (df["kl"] >= 0).all() and pd.notna(df["ppl"]).all()
