"""The documented Python API (issue 26): train, search, benchmark, report, each one call, as the
README's example uses them."""
import re

import pytest

from anchoropt import api
from tests.helpers import REPO_ROOT, TINY, TINY_SPACE, write_suite


def _keys(root, tmp_path):
    return dict(dataset="eurosat", data_root=str(root), backbone=TINY, pretrained="none",
                descriptions_dir=str(root), cache_dir=str(tmp_path / "cache"), shots=4, epochs=2,
                anchor_epochs=2, train_views=1, device="cpu")


def test_train_and_report_are_one_call_each(tmp_path, eurosat_root):
    lines = []
    record = api.train(method="coop", seed=1, out=tmp_path / "coop", log=lines.append, **_keys(eurosat_root, tmp_path))
    assert record["method"] == "coop" and 0 <= record["metrics"]["hm"] <= 100
    assert (tmp_path / "coop" / "record.json").is_file() and lines[0].startswith("encoding eurosat's")
    api.train(out=tmp_path / "two", seed=1, log=None, **_keys(eurosat_root, tmp_path))  # AnchorOPT, the default
    path = api.report([tmp_path / "coop", tmp_path / "two"], tmp_path / "report", baseline="coop")
    assert path == tmp_path / "report" / "report.md" and "## Paired tests against CoOp" in path.read_text()
    with pytest.raises(ValueError, match="nope"):
        api.train(nope=1, **_keys(eurosat_root, tmp_path))  # a ConfigError, not an exit


@pytest.mark.ray
def test_search_and_benchmark_are_one_call_each(tmp_path, eurosat_root, ray_session):
    found = api.search(TINY_SPACE, tmp_path / "search", num_trials=2, max_concurrent=2,
                       **_keys(eurosat_root, tmp_path))
    assert found.n_complete == 2 and set(found.best_params) >= {"n_anchors", "lr"}
    suite = write_suite(tmp_path, eurosat_root, seeds=(1,))
    counts = api.benchmark(suite, tmp_path / "results", methods=["zeroshot", "coop"], epochs=1)
    assert counts == {"done": 2, "failed": 0, "skipped": 0}
    text = api.report(tmp_path / "results", tmp_path / "report").read_text()
    assert f"Suite file: {suite.resolve()}." in text.replace("\\_", "_")  # issue 26: it said "not recorded"


def test_readme_example_uses_the_api_as_defined():
    text = (REPO_ROOT / "README.md").read_text()
    block = text[text.index("from anchoropt import api"):]
    block = block[:block.index("```")]
    for name in ("train", "search", "benchmark", "report"):
        assert re.search(rf"api\.{name}\(", block), name
    compile(block, "README", "exec")  # valid Python
