"""User-supplied names in a report: never a script in report.html (checked in a real headless browser),
a formula in a CSV, a command in tables.tex or a broken Markdown table (issue 28)."""
import csv
import os
import shutil
import subprocess
import tempfile

import matplotlib

matplotlib.use("Agg")

import markdown as markdown_lib  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from anchoropt import report  # noqa: E402
from anchoropt.escape import csv_cell, latex, markdown  # noqa: E402
from anchoropt.report.writer import html_page  # noqa: E402

# each payload, if it ran, would set the page title to PWNED (never written contiguously, so the
# marker can only appear in the DOM by a script running)
RUN = "document.title='PW'+'NED'"
IMG = f"<img src=x onerror={RUN}>"
SCRIPT = f"<script>{RUN}</script>"
SVG = f"<svg onload={RUN}>"
DETAILS = f"<details open ontoggle={RUN}>"
METHODS = [IMG, "=HYPERLINK(\"http://x\")", "a|b\n# c", r"\input{/etc/passwd} $\alpha$"]
DATASETS = [SCRIPT, "@SUM(1+1)", "-2+3", "+x_"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _records():
    rows = []
    for i, method in enumerate(METHODS):
        for j, dataset in enumerate(DATASETS):
            for seed in (1, 2):
                v = 50.0 + 3 * i + j + seed
                rows.append({"method": method, "dataset": dataset, "seed": seed, "acc_base": v, "acc_novel": v,
                             "hm": v, "backbone": SVG, "pretrained": DETAILS, "shots": 16, "tuning": IMG})
    return pd.DataFrame(rows)


def _with_files(records: pd.DataFrame, folder) -> pd.DataFrame:
    """``records`` each with a record file (its ``path``) whose versions, creation time and config hold
    payloads too: the report's provenance section prints them."""
    import json

    paths = []
    for i, row in enumerate(records.to_dict("records")):
        path = folder / f"r{i}.json"
        path.write_text(json.dumps({**row, "versions": {"anchoropt": IMG, "commit": SVG, "torch": SCRIPT,
                                                        "open_clip": "=1+1", "python": DETAILS},
                                    "created": f"{SCRIPT}{i:03d}", "config": {"ctx_init": IMG, "lr": 0.002}}))
        paths.append(str(path))
    return records.assign(path=paths)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("escaped")
    records = _with_files(_records(), tmp_path_factory.mktemp("records"))
    report.write_report(records, out, baseline=METHODS[1], display_names={METHODS[2]: f"[x](javascript:{RUN})"},
                        schedules=(METHODS[0], METHODS[3]))
    return out


def _browser():
    exe = next(filter(None, map(shutil.which, BROWSERS)), None)
    if exe is None:
        if os.environ.get("ANCHOROPT_REQUIRE_BROWSER"):
            pytest.fail("no headless browser (chromium) on PATH: .ci/run installs it")
        pytest.skip("no headless browser (chromium) on PATH: apt-get install -y chromium")
    return exe


def _dom(page) -> str:
    """The DOM of ``page`` after a headless chromium loaded it and ran its scripts (2 s of virtual time)."""
    exe = _browser()
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--virtual-time-budget=2000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    assert "</html>" in done.stdout, done.stderr[-2000:]
    return done.stdout


def test_browser_check_sees_a_script_run(tmp_path):
    """The check itself: the same payloads in Markdown converted with raw HTML passed through (the old
    report.html) do run in the browser."""
    page = tmp_path / "raw.html"
    body = markdown_lib.markdown(f"| method |\n|---|\n| {IMG} |\n\n{SVG}\n\n{SCRIPT}\n", extensions=["tables"])
    page.write_text(f"<!DOCTYPE html><html><head><title>r</title></head><body>{body}</body></html>")
    assert "<title>PWNED</title>" in _dom(page)


def test_report_html_runs_no_script_in_a_browser(written):
    dom = _dom(written / "report.html")
    assert "PWNED" not in dom
    assert "<title>Significance report</title>" in dom
    assert "javascript:" not in dom.replace(f"[x](javascript:{RUN})", "")  # shown as text, never a link
    assert "<img src=\"x\"" not in dom and "<svg" not in dom and "<details" not in dom


def test_report_markdown_holds_names_as_text(written):
    text = (written / "report.md").read_text()
    for raw in (IMG, SCRIPT, SVG, DETAILS, "<a href"):
        assert raw not in text
    assert "Records written by anchoropt &lt;img src=x" in text  # provenance read from the record files
    html = markdown_lib.markdown(text, extensions=["tables"])  # raw HTML passed through, as most viewers do
    for tag in ('<img src="x"', "<script", "<svg", "<details", 'href="javascript'):
        assert tag not in html
    assert "a|b # c" in html  # the name, on one line, inside one table cell
    table = text[text.index("### HM (%)"):].split("\n\n")[2].splitlines()
    assert {line.replace("\\|", "").count("|") for line in table} == {len(METHODS) + 2}


def test_csv_cells_never_start_a_formula(written):
    files = sorted(written.glob("*.csv"))
    assert len(files) >= 8
    seen = set()
    for file in files:
        with file.open(newline="") as f:
            for row in csv.reader(f):
                for cell in row:
                    assert not cell.startswith(("=", "+", "@", "\t", "\r")), (file.name, cell)
                    assert not (cell.startswith("-") and not _number(cell)), (file.name, cell)
                    seen.add(cell)
    assert "'=HYPERLINK(\"http://x\")" in seen and "'@SUM(1+1)" in seen and "'-2+3" in seen


def _number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def test_latex_tables_hold_names_as_text(written):
    tex = (written / "tables.tex").read_text()
    assert r"\input" not in tex and r"\alpha" not in tex and "<script>" not in tex
    assert r"\textbackslash{}input\{/etc/passwd\} \$\textbackslash{}alpha\$" in tex
    assert latex("a\n\nb & c") == r"a b \& c"


def test_escape_functions():
    assert markdown("coop_anchoropt") == "coop_anchoropt"  # intraword underscore stays readable
    assert markdown("_x_ *y* `z` [l](u) a|b <b> &amp;") == r"\_x\_ \*y\* \`z\` \[l\](u) a\|b &lt;b> &amp;amp;"
    assert markdown("# h") == "# h" and markdown("# h", line_start=True) == r"\# h"
    assert markdown("1. x", line_start=True) == r"1\. x"
    assert csv_cell("=1+1") == "'=1+1" and csv_cell("-1") == "'-1" and csv_cell(-1.0) == -1.0
    assert csv_cell("coop") == "coop"


def test_html_page_shows_raw_html_as_text(tmp_path):
    page = html_page(f"# t\n\n{SCRIPT}\n\nx {IMG}\n", tmp_path)
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;" in page


def test_errors_name_the_records_methods_briefly(tmp_path):
    """An unknown display name or baseline is one short line, not every (long) method name of the records."""
    one = _records().query("method == 'coop' or method == @METHODS[1]")
    records = pd.concat([one.assign(method=f"{'m' * 500}{i}") for i in range(30)], ignore_index=True)
    for options in ({"display_names": {"nope": "x"}}, {"baseline": "nope"}):
        with pytest.raises(ValueError) as exc:
            report.write_report(records, tmp_path, **options)
        assert len(str(exc.value)) < 400 and "\n" not in str(exc.value) and "nope" in str(exc.value)


def test_every_csv_is_written_by_the_one_escaping_writer():
    """No CSV writer bypasses escape.write_csv (the research scripts' knobs.csv, oracle.csv and
    val_vs_test.csv wrote dataset and schedule names raw)."""
    from tests.helpers import REPO_ROOT

    writers = [f"{path.relative_to(REPO_ROOT)}:{n}" for folder in ("anchoropt", "benchmarks")
               for path in sorted((REPO_ROOT / folder).rglob("*.py")) if path.name != "escape.py"
               for n, line in enumerate(path.read_text().splitlines(), 1) if ".to_csv(" in line or "csv.writer(" in line]
    assert writers == []
