import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["ANCHOROPT_MODEL_CONFIGS"] = str(Path(__file__).parent / "model_configs")  # Ray workers too

import anchoropt.backbone  # noqa: E402,F401  (registers the tests' model configs)

from tests.helpers import TINY, make_split_dataset, write_descriptions  # noqa: E402,F401

EUROSAT_CLASSES = ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road",
                   "Industrial Buildings", "Pasture Land"]


@pytest.fixture(scope="session")
def tiny_backbone():
    from anchoropt.backbone import create_backbone
    return create_backbone(TINY, "")


@pytest.fixture(scope="session")
def eurosat_root(tmp_path_factory):
    """A data root holding a 6-class EuroSAT in its CoOp layout, with CuPL-style descriptions."""
    root = tmp_path_factory.mktemp("data")
    make_split_dataset(root, "eurosat", "2750", "split_zhou_EuroSAT.json", EUROSAT_CLASSES)
    write_descriptions(root / "eurosat_prompts_full.json", EUROSAT_CLASSES)
    return root


@pytest.fixture
def tiny_cfg(eurosat_root, tmp_path):
    from anchoropt.config import load_config

    def make(**overrides):
        values = dict(dataset="eurosat", data_root=str(eurosat_root), backbone=TINY, pretrained="",
                      descriptions_dir=str(eurosat_root), cache_dir=str(tmp_path / "cache"), shots=4,
                      epochs=2, anchor_epochs=2, train_views=2, batch_size=8, device="cpu")
        values.update(overrides)
        return load_config(overrides=values)
    return make


def pytest_collection_modifyitems(config, items):
    """A test that uses the shared Ray must carry ``@pytest.mark.ray``, so ``-m "not ray"`` skips it."""
    unmarked = [item.nodeid for item in items
                if "ray_session" in getattr(item, "fixturenames", ()) and item.get_closest_marker("ray") is None]
    if unmarked:
        raise pytest.UsageError(f"tests using ray_session without @pytest.mark.ray: {', '.join(unmarked)}")


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for the whole test session, shut down at the end."""
    import ray

    from anchoropt.raytools import ensure_ray
    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def saved(monkeypatch):
    """Every figure the report or a search folder saves, by file name (the real file is written too)."""
    from anchoropt.report import figures
    from anchoropt.report import tuning

    figs = {}
    real = figures.save

    def keep(fig, path):
        figs[path.name] = fig
        real(fig, path)
    monkeypatch.setattr(figures, "save", keep)
    monkeypatch.setattr(tuning, "save", keep)  # imported by name there
    return figs
