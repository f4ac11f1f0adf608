"""The report stage on hand-made grid results (no training): which neighbours the data can tell apart, error
intervals, figures that state their configuration, PNGs as DVC image plots. Run by real `dvc repro` in a
temporary git+DVC project."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import dvc, git, make_project

TEST_IMAGES, CLASSES = 200, 10
# test images each variant gets right: the first k. Neighbours relu+bn/elu+bn and elu/relu differ on 4 images
# only (McNemar p = 0.125), elu+bn/elu on 46 (p ~ 3e-14)
RIGHT = {("relu", True): 150, ("elu", True): 146, ("elu", False): 100, ("relu", False): 96}
GRID = {"dataset": ["cifar10"], "activation": ["relu", "elu"], "batch_norm": [False, True], "seed": [0]}


def write_entry(repo, act, bn, seed, right, predictions=True):
    """The files train and evaluate write for one grid entry, in their layout."""
    from stages.entry import paths

    p = {k: repo / v for k, v in paths("cifar10", act, bn, seed).items()}
    labels = np.arange(TEST_IMAGES) % CLASSES
    pred = np.where(np.arange(TEST_IMAGES) < right, labels, (labels + 1) % CLASSES)
    confusion = np.zeros((CLASSES, CLASSES), int)
    np.add.at(confusion, (labels, pred), 1)
    error = 1 - right / TEST_IMAGES
    results = {
        "classes": [f"c{i}" for i in range(CLASSES)],
        "confusion": confusion.tolist(),
        **({"predictions": pred.tolist(), "labels": labels.tolist()} if predictions else {}),
    }
    metrics = {
        "test_accuracy": 1 - error,
        "test_error": error,
        "test_loss": 1.5,
        "parameters": 1000,
        "epochs": 3,
        "train_seconds": 30.0,
        "seconds_per_epoch": 10.0 + bn,
        "diverged": False,
    }
    for key, obj in (
        ("results", results),
        ("metrics", metrics),
        ("summary", {"train_images": 1000, "precision": "float32", "backend": "tensorflow"}),
    ):
        p[key].parent.mkdir(parents=True, exist_ok=True)
        p[key].write_text(json.dumps(obj))
    epochs = np.arange(3)
    series = {
        "train/accuracy": 0.2 * epochs,
        "eval/accuracy": 0.2 * epochs,
        "train/loss": 2 - epochs / 2,
        "eval/loss": 2.1 - epochs / 2,
        **{f"train/act{i}_mean": 0.1 * i + epochs for i in range(1, 10)},
    }
    for name, values in series.items():
        f = p["live"] / f"plots/metrics/{name}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": epochs, name.split("/")[1]: values}).to_csv(f, sep="\t", index=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory, cifar10_archive):
    """The report of the hand-made grid, run by `dvc repro` and committed."""
    repo = make_project(tmp_path_factory.mktemp("report") / "repo", cifar10_archive, {"grid": GRID})
    for (act, bn), right in RIGHT.items():
        write_entry(repo, act, bn, 0, right)
    dvc("repro", "--single-item", "report", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "report", cwd=repo)
    return repo


def test_neighbours_that_the_test_images_can_tell_apart(study):
    summary = json.loads((study / "metrics/summary.json").read_text())["cifar10"]
    neighbours = summary["neighbours"]
    assert list(neighbours) == ["relu+bn vs elu+bn", "elu+bn vs elu", "elu vs relu"]
    assert {k: v["distinguishable"] for k, v in neighbours.items()} == {
        "relu+bn vs elu+bn": False,
        "elu+bn vs elu": True,
        "elu vs relu": False,
    }
    first = neighbours["relu+bn vs elu+bn"]
    assert first["test"].startswith("McNemar") and (
        first["only_better_right"],
        first["only_worse_right"],
    ) == (4, 0)
    assert first["p"] == pytest.approx(2 * 0.5**4)
    assert neighbours["elu+bn vs elu"]["p"] < 1e-10
    # `dvc metrics show` keeps it: dicts, not lists
    shown = json.loads(dvc("metrics", "show", "--json", "metrics/summary.json", cwd=study).stdout)
    data = next(iter(shown.values()))["data"]["metrics/summary.json"]["data"]["cifar10"]
    assert data["neighbours"]["elu+bn vs elu"]["distinguishable"] is True


def test_dvc_metrics_show_prints_the_ranking_as_a_table_a_terminal_holds(study):
    """Was: `dvc metrics show metrics/summary.json`, one row 6,411 characters wide with 245 columns."""
    out = dvc(
        "metrics", "show", "metrics/rank", cwd=study
    ).stdout  # after a warning: no metrics/experiment.json here
    lines = [line for line in out[out.index("Path") :].splitlines() if line.strip()]
    assert lines[0].split() == ["Path", "error", "error_lower", "error_upper", "rank", "seeds"]
    variants = json.loads((study / "metrics/summary.json").read_text())["cifar10"]["variants"]
    ranked = sorted(variants, key=lambda v: variants[v]["rank"])
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == [f"metrics/rank/cifar10/{i}-{v}.json" for i, v in enumerate(ranked, 1)]
    for row, v in zip(rows, ranked):
        expected = [
            variants[v][k]
            for k in ("test_error_mean", "test_error_ci_low", "test_error_ci_high", "rank", "n")
        ]
        assert [float(x) for x in row[1:]] == pytest.approx(
            expected, abs=1e-4
        )  # DVC shows 5 significant digits
    assert max(map(len, lines)) <= 100


def test_one_seed_gets_a_binomial_interval(study):
    from scipy.stats import binomtest

    v = json.loads((study / "metrics/summary.json").read_text())["cifar10"]["variants"]["relu+bn"]
    ci = binomtest(50, TEST_IMAGES).proportion_ci(0.95, "wilson")
    assert (v["test_error_ci_low"], v["test_error_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert v["test_error_ci_low"] < 0.25 < v["test_error_ci_high"] and v["test_images"] == TEST_IMAGES


def test_report_states_its_configuration_and_links_the_figures(study):
    report = (study / "reports/report.md").read_text()
    params = yaml.safe_load((study / "params.yaml").read_text())
    config = (
        f"Configuration: cifar10, width {params['model']['width']}, 1,000 training images, 3 epochs, "
        f"batch {params['train']['batch_size']}, sgd lr {params['train']['learning_rate']} (×0.1 at "
        f"57%/71%/86% of training), float32, backend tensorflow, 200 test images, seed 0."
    )
    assert config in report
    assert (
        "Seconds per epoch, and so BN's cost ratio, depend on the machine and on what else ran on it"
        in report
    )
    assert "| elu+bn | elu | McNemar exact (same test images) |" in report and "| yes |" in report
    for name in ("curves", "test_error", "bias_shift"):
        assert f"](../plots/grid/cifar10_{name}.png)" in report  # relative to reports/
        assert (study / f"plots/grid/cifar10_{name}.png").stat().st_size > 10_000
    assert not list((study / "reports").glob("*.png"))  # the figures moved to plots/


def test_figures_tell_activation_bn_and_chance_apart(study, monkeypatch):
    from stages import report

    monkeypatch.chdir(study)
    df, curves, correct = report.collect(GRID)
    s, *_ = report.summarise(df, correct)
    fig = report.plot_curves(curves, CLASSES, "config line")
    val_accuracy = fig.axes[2]
    lines = {ln.get_label(): ln for ln in val_accuracy.get_lines()}
    # one colour per variant, the one the interactive charts get (report.colour); BN also by line style
    colours = {v: lines[v].get_color() for v in ("relu", "relu+bn", "elu", "elu+bn")}
    assert colours == {
        v: report.colour(v.split("+")[0], v.endswith("+bn"), GRID["activation"]) for v in colours
    }
    assert len(set(colours.values())) == 4 and colours["relu+bn"] == report.colour(
        "relu", True, ["selu", "relu"]
    )
    assert (lines["relu"].get_linestyle(), lines["relu+bn"].get_linestyle()) == ("--", "-")
    assert lines["chance (1/10)"].get_ydata()[0] == pytest.approx(0.1)
    assert all(t == int(t) for t in val_accuracy.get_xticks())
    assert "config line" in [t.get_text() for t in fig.texts]
    fig = report.plot_error_and_speed(s, "config line")
    assert fig.axes[0].get_ylabel() == fig.axes[1].get_ylabel() == "test error"
    assert "Wilson" in fig.texts[-1].get_text() or "Wilson" in fig._suptitle.get_text()


def test_figure_legends_cover_no_data(study, monkeypatch, tmp_path):
    """Were inside the axes, over the curves; now beside them, inside the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from stages import report

    monkeypatch.chdir(study)
    curves = report.collect(GRID)[1]
    for fig in (
        report.plot_curves(curves, CLASSES, "config line"),
        report.plot_bias_shift(curves, "config line"),
    ):
        report.save(fig, tmp_path / "figure.png")  # laid out as the report stage lays it out (and closed)
        renderer = FigureCanvasAgg(fig).get_renderer()
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert len(legends) == 1 and len(legends[0].get_texts()) >= len(RIGHT)
        box = legends[0].get_window_extent(renderer)
        assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes), box
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), (box, fig.bbox)


def test_report_says_how_far_it_reproduces_the_write_up(study):
    # write-up over these four: relu+bn > elu > elu+bn > relu; measured: relu+bn > elu+bn > elu > relu
    agree = json.loads((study / "metrics/summary.json").read_text())["cifar10"]["write_up"]["ranking"]
    assert agree["measured"] == "relu+bn > elu+bn > elu > relu" and agree["variants"] == 4
    assert (agree["pairs_alike"], agree["pairs"], agree["measured_otherwise"]) == (5, 6, "elu+bn > elu")
    assert agree["kendall_tau"] == pytest.approx((5 - 1) / 6)
    report = (study / "reports/report.md").read_text()
    assert "Write-up's ranking: relu+bn > elu > prelu > elu+bn > relu." in report
    assert "Kendall's τ = +0.67" in report and "5 of 6 pairs in the write-up's order" in report


def test_missing_predictions_fall_back_to_counts(study, tmp_path, monkeypatch):
    from stages import report

    monkeypatch.chdir(study)
    df, _, correct = report.collect(GRID)
    del correct["cifar10", "elu", 0]
    neighbours = report.summarise(df, correct)[3]
    assert neighbours[1]["test"].startswith("Fisher") and neighbours[0]["test"].startswith("McNemar")
    assert neighbours[1]["distinguishable"] is True  # 27 % against 50 % errors on 200 images


@pytest.mark.e2e
def test_plots_diff_shows_each_figure_of_two_revisions(study):
    write_entry(study, "relu", False, 0, 180)  # relu now first: a new ranking
    dvc("repro", "--single-item", "report", cwd=study)
    out = dvc(
        "plots", "diff", "HEAD", "--json", cwd=study
    ).stdout  # after a warning: no experiment curves here
    shown = json.loads(out.splitlines()[-1])["data"]["plots/grid/cifar10_test_error.png"]
    images = {d["revisions"][0]: Path(d["url"]).read_bytes() for d in shown}
    assert sorted(images) == ["HEAD", "workspace"] and images["HEAD"] != images["workspace"]


def test_cifar100_is_held_against_the_write_ups_error():
    from stages import report

    s = pd.DataFrame(
        {"rank": [1], "test_error_mean": [0.40], "test_error_ci_low": [0.35], "test_error_ci_high": [0.45]},
        index=["relu+bn"],
    )
    agree = report.agreement("cifar100", s)
    assert "ranking" not in agree
    assert agree["test_error"]["relu+bn"] == {
        "write_up": 0.36,
        "measured": 0.40,
        "ci_low": 0.35,
        "ci_high": 0.45,
        "inside_interval": True,
    }
    lines = "\n".join(report.agreement_lines("cifar100", agree))
    assert "Write-up's test error of relu+bn: 0.36; this run: 0.4000" in lines and "inside" in lines
    assert "reports nothing on cifar100" not in lines
    assert "reports nothing on cifar100" in "\n".join(report.agreement_lines("cifar100", {}))


def test_several_seeds_are_tested_over_seeds_with_mcnemar_beside(tmp_path, monkeypatch):
    """Two seeds: Wilcoxon cannot reject, so the paired t-test decides; McNemar on each seed is reported
    beside."""
    from stages import report

    grid = {**GRID, "seed": [0, 1]}
    right = {
        ("relu", True): (150, 152),
        ("elu", True): (120, 121),
        ("elu", False): (100, 102),
        ("relu", False): (99, 60),
    }
    for (act, bn), per_seed in right.items():
        for seed, k in enumerate(per_seed):
            write_entry(tmp_path, act, bn, seed, k)
    monkeypatch.chdir(tmp_path)
    df, _, correct = report.collect(grid)
    s, ranking, tests, neighbours, _ = report.summarise(df, correct)
    assert ranking == ["relu+bn", "elu+bn", "elu", "relu"] and list(s.n) == [2, 2, 2, 2]
    first, _, last = neighbours
    assert (
        first["test"] == "paired t over 2 seeds" and first["distinguishable"] is True
    )  # 30/31 images: t = 61
    assert first["mcnemar_p_per_seed"] == {"0": pytest.approx(2 * 0.5**30), "1": pytest.approx(2 * 0.5**31)}
    assert first["mcnemar_same_way"] and first["mcnemar_all_below_alpha"]
    assert last["test"] == "paired t over 2 seeds" and last["distinguishable"] is False  # 1 and 42 images
    assert last["mcnemar_same_way"] and not last["mcnemar_all_below_alpha"]
    lines = "\n".join(report.neighbour_lines(s, tests, neighbours))
    assert (
        "McNemar p per seed (same test images)" in lines and "Wilcoxon cannot reach p < 0.05 below 6" in lines
    )


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            "summary={}",
            "models/grid/cifar10-relu-True-0.json: not what its stage writes (no 'train_images'); "
            "rebuild it: dvc repro -f train@cifar10-relu-True-0",
        ),
        (
            "summary=not json",
            "models/grid/cifar10-relu-True-0.json: not JSON (JSONDecodeError); rebuild it: dvc repro -f "
            "train@cifar10-relu-True-0",
        ),
        (
            "metrics=missing",
            "metrics/grid/cifar10-relu-True-0.json: missing; rebuild it: dvc repro -f "
            "evaluate@cifar10-relu-True-0",
        ),
        (
            "curves=missing",
            "dvclive/grid/cifar10-relu-True-0: no loss curve (dvclive's plots/metrics/*/loss.tsv); rebuild "
            "it: dvc repro -f train@cifar10-relu-True-0",
        ),
    ],
)
def test_a_damaged_or_missing_input_of_the_report_is_one_line_naming_the_file_and_the_stage(
    tmp_path, monkeypatch, damage, expected
):
    from stages import report
    from stages.cli import UserError
    from stages.entry import paths

    for (act, bn), right in RIGHT.items():
        write_entry(tmp_path, act, bn, 0, right)
    p = {k: tmp_path / v for k, v in paths("cifar10", "relu", True, 0).items()}
    what, how = damage.split("=")
    if what == "curves":
        for f in (p["live"] / "plots/metrics").rglob("*loss.tsv"):
            f.unlink()
    elif how == "missing":
        p[what].unlink()
    else:
        p[what].write_text(how)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        report.collect(GRID)
    assert str(e.value) == expected
