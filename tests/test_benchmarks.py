"""Every script in benchmarks/ runs to the end at its smallest size (a smoke run: the numbers are not checked, only
that the script still works against the current code)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# The smallest run of each script: as few samples, steps and requests as it accepts.
SMALLEST = {
    "addition_bound.py": ["--samples", "1", "--draws", "1", "--iterations", "2", "--resolution", "64"],
    "bench_batch.py": ["--presets", "tiny", "--samples", "2", "--shard-size", "1", "--clients", "1", "--requests", "1"],
    "bench_data.py": ["--count", "11", "--resolution", "64", "--shard-size", "8", "--per-task-samples", "1",
                      "--repeats", "1"],
    "bench_gedit.py": ["--samples", "2", "--latency", "0"],
    "bench_gpu.py": ["--device", "cpu", "--preset", "tiny", "--resolution", "64", "--steps", "1", "--modes", "eager"],
    "bench_serve.py": ["--requests", "2", "--clients", "2"],
    "bench_train.py": ["--configs", "tiny", "--steps", "3", "--warmup", "1", "--samples", "4"],
    "bench_transformer.py": ["--resolution", "64", "--text-length", "8", "--steps", "1", "--presets", "tiny",
                             "--load-hidden", "128", "--load-depth", "1", "1"],
    "grounding.py": ["--samples", "1", "--resolution", "64", "--tasks", "subject_removal"],
}


def test_every_benchmark_has_a_smoke_run():
    assert sorted(path.name for path in BENCHMARKS.glob("*.py")) == sorted(SMALLEST)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(path.name for path in BENCHMARKS.glob("*.py")))
def test_the_benchmark_runs_to_the_end_at_its_smallest_size(script, tmp_path):
    run = subprocess.run([sys.executable, str(BENCHMARKS / script), *SMALLEST[script]], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
