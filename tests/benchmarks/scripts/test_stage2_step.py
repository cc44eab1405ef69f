"""benchmarks/perf/stage2_step.py: both sides run interleaved and the figures are printed."""
from tests.helpers import TINY, load_script


def test_stage2_step_prints_medians_speedup_and_load(capsys):
    load_script("benchmarks/perf/stage2_step.py").main(
        ["--backbone", TINY, "--classes", "6", "--methods", "anchoropt", "coop", "--rounds", "2"])
    out = capsys.readouterr().out
    assert out.count("per-class prompts") == 2 and out.count("shared prefix") == 2
    assert out.count("speed-up") == 2 and "load average at start" in out and "load average at end" in out
