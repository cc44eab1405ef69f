"""benchmarks/scripts/toy_figures.py: the README's toy-11 table."""
from anchoropt.toy.datasets import TOY11_NAMES, get_toy_dataset, write_dataset
from tests.helpers import load_script


def test_figures_table_reports_means_chance_and_zeroshot_summary(tmp_path):
    import pandas as pd

    figures_table = load_script("benchmarks/scripts/toy_figures.py").figures_table

    d = get_toy_dataset("toy_colour")
    write_dataset(tmp_path, d, seed=0, ds_index=TOY11_NAMES.index("toy_colour"),
                  sizes={"train": 1, "val": 1, "test": 1})
    rows = [("zeroshot_clip", 1, 99.0, 50.0), ("zeroshot_clip", 2, 99.0, 50.0),
            ("coop", 1, 80.0, 40.0), ("coop", 2, 90.0, 30.0),
            ("coop_anchoropt_two_stage", 1, 70.0, 60.0), ("coop_anchoropt_two_stage", 2, 70.0, 60.0)]
    df = pd.DataFrame([{"method": m, "dataset": "toy_colour", "seed": s, "acc_base": b, "acc_novel": n,
                        "hm": 2 * b * n / (b + n)} for m, s, b, n in rows])
    table = figures_table(df, str(tmp_path))
    row = next(line for line in table.splitlines() if line.startswith("| toy_colour"))
    # CoOp: base mean 85, novel mean 35, HM = mean over seeds of per-seed HM
    assert row.split(" | ")[1:] == ["24", "8.3 / 8.3", "99.0 / 50.0", "85.0 / 35.0 / 49.2", "70.0 / 60.0 / 64.6 |"]
    assert "twice chance on base and novel: 1 of 1" in table and "98 % on base or novel: toy_colour" in table
