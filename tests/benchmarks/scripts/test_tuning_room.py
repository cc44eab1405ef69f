"""benchmarks/scripts/tuning_room.py: the oracle summary (issue 24: is there room to tune?)."""
import pandas as pd

from tests.helpers import load_script


def test_oracle_summary_pairs_oracle_and_defaults_over_datasets_on_the_fresh_seeds():
    oracle_summary = load_script("benchmarks/scripts/tuning_room.py").oracle_summary
    runs, table = [], []
    for i, dataset in enumerate(["a", "b", "c", "d", "e", "f"]):
        oracle_trial = 0 if dataset == "f" else 3  # on f the defaults were best on seed 1 too
        for seed, shift in ((2, 0.0), (3, 2.0)):  # defaults 60/60 and 62/62: HM 60 and 62, SD 1.414
            runs.append(("two_stage", dataset, "defaults", 0, seed, 60.0 + shift, 60.0 + shift))
            gain = 0.0 if oracle_trial == 0 else 1.0 + i
            runs.append(("two_stage", dataset, "oracle", oracle_trial, seed, 60.0 + shift + gain, 60.0 + shift + gain))
        table += [("two_stage", dataset, 0, 50.0), ("two_stage", dataset, 3, 50.0 + (0 if oracle_trial == 0 else 5))]
    runs = pd.DataFrame(runs, columns=["schedule", "dataset", "which", "trial", "seed", "acc_base", "acc_novel"])
    table = pd.DataFrame(table, columns=["schedule", "dataset", "trial", "test_hm"])
    line, = oracle_summary(runs, table)
    # oracle − defaults: 1, 2, 3, 4, 5 and 0 (f): mean 2.5; Wilcoxon exact over the 5 nonzero: 2/2^5
    assert line.startswith("two_stage: oracle − defaults test HM on seeds 2,3: mean +2.50 (95% CI [")
    assert "Wilcoxon p 0.062 over 6 datasets (5 nonzero)" in line
    assert "on the seed it was chosen on +4.17" in line and "oracle is trial 0 on 1;" in line
    assert line.endswith("defaults' seed-to-seed SD of test HM 1.41")
