"""A normal (non-editable) install: every module and the default suites and spaces are in the wheel."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

PROBE = """
import anchoropt, pathlib
from anchoropt.pipeline import DEFAULT_SPACE, DEFAULT_SUITE
from anchoropt.search.space import load_space
from anchoropt.suite import load_suite
site = pathlib.Path(anchoropt.__file__).parent
assert site.parent.name == "site", anchoropt.__file__
assert DEFAULT_SUITE.is_relative_to(site) and DEFAULT_SPACE.is_relative_to(site), (DEFAULT_SUITE, DEFAULT_SPACE)
suite, space = load_suite(DEFAULT_SUITE), load_space(DEFAULT_SPACE)
# the README's paths, outside a checkout: the shipped copies (issue 26)
from anchoropt.search.spec import read_space
assert load_suite("benchmarks/toy11.yaml").path == DEFAULT_SUITE
assert read_space("search_spaces/anchors.yaml")[2] == str(DEFAULT_SPACE.resolve())
print("OK", suite.name, len(suite.datasets), space.names)
"""


@pytest.mark.slow
def test_wheel_ships_the_default_suite_and_space_and_runs_them_installed(tmp_path):
    """Issue 16, fault 5: `anchoropt run` from a normal install found no benchmarks/toy11.yaml."""
    src = tmp_path / "src"  # setuptools builds in the source tree: build a copy, not the checkout
    top = {".git", "data", "results", "runs", "reports", "build"}  # the checkout's own outputs, not sources
    shutil.copytree(REPO_ROOT, src, ignore=lambda folder, names: [
        n for n in names if (Path(folder) == REPO_ROOT and n in top) or n.endswith(".egg-info") or n == "__pycache__"])
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("anchoropt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "anchoropt").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    shipped = {f"anchoropt/suites/{p.name}" for p in (REPO_ROOT / "benchmarks").glob("*.yaml")} | \
        {f"anchoropt/spaces/{p.name}" for p in (REPO_ROOT / "search_spaces").glob("*.yaml")}
    assert "anchoropt/suites/toy11.yaml" in shipped and shipped <= names, sorted(shipped - names)
    assert not any(n.startswith(("benchmarks/", "search_spaces/", "tests/")) for n in names)
    assert not [n for n in names if n.startswith(("anchoropt/suites/", "anchoropt/spaces/")) and n.endswith(".py")]
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site"), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("OK toy11 11"), out.stderr[-2000:]
