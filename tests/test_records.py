"""Result records: built, relabelled, split per scored dataset, version-1 records read as version 2."""
import json

import pytest

from anchoropt.config import make_config
from anchoropt.records import RECORD_VERSION, build_record, dataset_records, load_records, relabel, upgrade

V1 = {"record_version": 1, "method": "coop_anchoropt_two_stage", "dataset": "dtd", "seed": 2, "shots": 16,
      "protocol": "base2novel", "objective": "val", "scored_on": "test",
      "config": {"dataset": "dtd", "objective": "test", "lr": 0.002},
      "metrics": {"acc_base": 80.0, "acc_novel": 70.0, "hm": 74.67}}


def test_build_relabel_and_read_back(tmp_path):
    cfg = make_config({"dataset": "toy_count", "method": "anchoropt", "schedule": "one_stage", "eval_split": "val"})
    record = relabel(build_record(cfg, {"acc_base": 50.0, "acc_novel": 40.0, "hm": 44.44}, 1.23456), "mine",
                     "search_val")
    assert record["record_version"] == RECORD_VERSION == 2
    assert (record["method"], record["tuning"], record["eval_split"]) == ("mine", "search_val", "val")
    assert record["config"]["eval_split"] == "val" and "objective" not in record["config"]
    assert record["wall_time_s"] == 1.235 and {"torch", "open_clip", "anchoropt"} <= set(record["versions"])
    (tmp_path / "r.json").write_text(json.dumps(record))
    row = load_records(tmp_path).iloc[0]
    assert (row["method"], row["tuning"], row["eval_split"], row["hm"]) == ("mine", "search_val", "val", 44.44)
    with pytest.raises(ValueError, match="tuning is 'val'"):
        relabel(record, "mine", "val")


def test_version_1_records_are_read_under_the_new_names(tmp_path):
    new = upgrade(V1)
    assert new["record_version"] == 2 and "objective" not in new and "scored_on" not in new
    assert (new["tuning"], new["eval_split"]) == ("search_val", "test")
    assert new["config"] == {"dataset": "dtd", "eval_split": "test", "lr": 0.002}
    assert upgrade({**V1, "objective": "untuned"})["tuning"] == "untuned"
    assert V1["objective"] == "val"  # the input is not changed
    (tmp_path / "old.json").write_text(json.dumps(V1))
    (tmp_path / "new.json").write_text(json.dumps({**new, "seed": 3}))
    df = load_records(tmp_path)
    assert list(df["tuning"]) == ["search_val", "search_val"] and list(df["eval_split"]) == ["test", "test"]


def test_unknown_version_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({**V1, "record_version": 7}))
    with pytest.raises(ValueError, match=r"r.json: malformed result record: record_version is 7, expected 1 or 2"):
        load_records(tmp_path)


def test_cross_dataset_run_writes_one_record_per_scored_dataset():
    record = {**upgrade(V1), "protocol": "cross_dataset", "config": {"dataset": "src", "targets": "a, b"},
              "metrics": {"acc_src": 90.0, "acc_a": 50.0, "acc_b": 40.0, "acc_anchor_a": 45.0}}
    out = dataset_records(record)
    assert list(out) == ["src", "a", "b"]
    assert out["src"]["role"] == "source" and out["a"]["role"] == "target" and out["b"]["source"] == "src"
    assert out["a"]["metrics"] == {"acc": 50.0, "acc_anchor": 45.0} and out["b"]["metrics"] == {"acc": 40.0}


@pytest.mark.parametrize("method, schedule, name", [
    ("anchoropt", "one_stage", "anchoropt_one_stage"), ("dept_anchoropt", "two_stage", "dept_anchoropt_two_stage"),
    ("maple_anchoropt", "one_stage", "maple_anchoropt_one_stage"), ("coop", "one_stage", "coop"),
    ("cocoop_atp", "two_stage", "cocoop_atp")])
def test_every_method_with_anchoropt_is_recorded_with_its_schedule(method, schedule, name):
    from anchoropt.config import TrainConfig
    from anchoropt.records import build_record

    assert build_record(TrainConfig(method=method, schedule=schedule), {"hm": 1.0}, 0.0)["method"] == name
