"""benchmarks/gpu_study.py --tiny: the GPU study command, on a CPU, in an interpreter without TensorFlow (as on
the GPU machines): it prepares the archive, measures throughput, trains and evaluates the entries that fit,
writes each entry's metrics, curves, images/s and timing, and a second call with the same --out continues."""
import json
import sys

import pandas as pd
import pytest

from tests.conftest import BACKEND_ENV, ROOT, run


@pytest.fixture(scope="module")
def study(tmp_path_factory, cifar10_archive):
    base = tmp_path_factory.mktemp("gpu-study")
    out = base / "out"
    p = run([sys.executable, str(ROOT / "benchmarks/gpu_study.py"), "--tiny", "--out", str(out), "--work",
             str(base / "work"), "--archive", str(cifar10_archive), "--md5", "none", "--processes", "1",
             "--measure-steps", "4", "--entries", "relu+bn", "elu", "--budget-seconds", "900"], base,
            env=BACKEND_ENV["jax"])
    return out, base, p.stdout


def test_tiny_study_writes_every_entry(study):
    out, _, output = study
    assert sorted(f.name for f in out.iterdir()) == ["curves.tsv", "log.txt", "results.json", "study.md"]
    entries = json.loads((out / "results.json").read_text())["entries"]
    assert set(entries) == {"relu+bn", "elu"}, output[-3000:]
    for v, r in entries.items():
        assert (r["backend"], r["device"], r["concurrent_processes"]) == ("jax", "cpu", 1)
        assert r["train_images"] == 100 and r["test_images"] == 50 and 0 <= r["test_error"] <= 1
        assert r["images_per_second"] > 0 and r["seconds_per_epoch"] > 0 and r["mfu"] is None  # no GPU peak
        assert r["flops_per_image"] == 3 * 2 * 4_529_088  # width 1/8: the convs' multiply-adds, x2 x3
    curves = pd.read_csv(out / "curves.tsv", sep="\t")
    assert sorted(curves.variant.unique()) == ["elu", "relu+bn"] and set(curves.epoch) == {1}
    assert "measure: 1 process: " in output and "plan: 1 processes" in output and "left out: none" in output


def test_second_call_continues_with_what_is_left(study):
    out, base, _ = study
    p = run([sys.executable, str(ROOT / "benchmarks/gpu_study.py"), "--tiny", "--out", str(out), "--work",
             str(base / "work"), "--entries", "relu+bn", "elu"], base, env=BACKEND_ENV["jax"])
    assert "holds every entry asked for (relu+bn, elu): nothing to do" in p.stdout
    assert len(json.loads((out / "results.json").read_text())["entries"]) == 2
