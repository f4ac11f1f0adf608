"""The report stage on hand-made grid results (no training): which neighbours the data can tell apart, error
intervals, what a run's size lets it claim, figures that state their configuration, PNGs as DVC image plots,
and every input checked before it is believed. `dvc repro` in a temporary git+DVC project, or the stage's
functions in a folder of hand-written files."""

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import ENV, ROOT, dvc, git, make_project

TEST_IMAGES, CLASSES = 200, 10
# test images each variant gets right: the first k. Neighbours relu+bn/elu+bn and elu/relu differ on 4 images
# only (McNemar p = 0.125), elu+bn/elu on 46 (p ~ 3e-14)
RIGHT = {("relu", True): 150, ("elu", True): 146, ("elu", False): 100, ("relu", False): 96}
GRID = {"dataset": ["cifar10"], "activation": ["relu", "elu"], "batch_norm": [False, True], "seed": [0]}
FULL = {"train_images": 49_960, "epochs": 10}  # all training images less TINY's 40 validation, 10 epochs


def write_entry(repo, act, bn, seed, right, predictions=True, train_images=1000, epochs=3):
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
        "test_loss": 1.5 + error,
        "test_images": TEST_IMAGES,
        "parameters": 1000,
        "epochs": epochs,
        "train_seconds": 30.0,
        "seconds_per_epoch": 10.0 + bn,
        "diverged": False,
    }
    summary = {"train_images": train_images, "precision": "float32", "backend": "tensorflow"}
    for key, obj in (("results", results), ("metrics", metrics), ("summary", summary)):
        p[key].parent.mkdir(parents=True, exist_ok=True)
        p[key].write_text(json.dumps(obj))
    steps = np.arange(epochs)
    series = {
        "train/accuracy": 0.2 * steps,
        "eval/accuracy": 0.2 * steps,
        "train/loss": 2 - steps / 2,
        "eval/loss": 2.1 - steps / 2,
        **{f"train/act{i}_mean": 0.1 * i + steps for i in range(1, 10)},
    }
    for name, values in series.items():
        f = p["live"] / f"plots/metrics/{name}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": steps, name.split("/")[1]: values}).to_csv(f, sep="\t", index=False)
    return p


def write_grid(repo, seeds=1, **size):
    """Every entry of GRID (seeds of them); seed s of the i-th variant of RIGHT gets s * (i + 1) more
    right."""
    for i, ((act, bn), right) in enumerate(RIGHT.items()):
        for seed in range(seeds):
            write_entry(repo, act, bn, seed, right + seed * (i + 1), **size)


@pytest.fixture(scope="module")
def study(tmp_path_factory, cifar10_archive):
    """The report of the hand-made grid (one seed, 1,000 images, 3 epochs: below the size that ranks), run by
    `dvc repro` and committed; (repo, what the stage printed)."""
    repo = make_project(tmp_path_factory.mktemp("report") / "repo", cifar10_archive, {"grid": GRID})
    write_grid(repo)
    out = dvc("repro", "--single-item", "report", cwd=repo).stdout
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "report", cwd=repo)
    return repo, out


def inputs(folder, monkeypatch, grid=GRID):
    """The report's checked inputs of the files under folder: {dataset: DatasetInputs}."""
    from stages.report_inputs import collect

    monkeypatch.chdir(folder)
    return collect(grid)


def summarise(i):
    from stages import statistics

    return statistics.summarise(i.dataset, i.rows, i.correct, 49_960)


def test_a_run_below_the_size_that_ranks_says_so_and_claims_nothing(study):
    """Was: 'distinguishable: yes' and Kendall's tau after 4 epochs on 8,000 images and one seed."""
    repo, out = study
    summary = json.loads((repo / "metrics/summary.json").read_text())["cifar10"]
    why = "1,000 of 49,960 training images; 3 epochs of the 10 a ranking needs; one seed of the 2 a ranking"
    why += " needs"
    assert (summary["can_rank"], summary["cannot_rank_because"]) == (False, why)
    assert (
        f"report: cifar10: relu+bn > elu+bn > elu > relu (an order of these models, not a ranking: {why})"
        in out
    )
    report = (repo / "reports/report.md").read_text()
    first = report.split("\n\n")[1]  # after the title
    assert first.startswith(f"cifar10: this run cannot rank its variants ({why})")
    assert "| distinguishable |" not in report and "| yes |" not in report and "| no |" not in report
    assert "Kendall" not in report and "Kendall" not in out and summary["write_up"] == {}
    assert (
        "Not compared: this run cannot rank" in report
        and "not a ranking of the variants: see above" in report
    )
    neighbours = summary["neighbours"]
    assert list(neighbours) == ["relu+bn vs elu+bn", "elu+bn vs elu", "elu vs relu"]
    assert {k: v["distinguishable"] for k, v in neighbours.items()} == dict.fromkeys(neighbours)
    first = neighbours["relu+bn vs elu+bn"]
    assert first["test"].startswith("McNemar")
    assert (first["only_better_right"], first["only_worse_right"]) == (4, 0)
    assert first["p"] == pytest.approx(2 * 0.5**4) and neighbours["elu+bn vs elu"]["p"] < 1e-10
    # `dvc metrics show` keeps it: dicts, not lists
    shown = json.loads(dvc("metrics", "show", "--json", "metrics/summary.json", cwd=repo).stdout)
    data = next(iter(shown.values()))["data"]["metrics/summary.json"]["data"]["cifar10"]
    assert data["can_rank"] is False and data["neighbours"]["elu+bn vs elu"]["p"] < 1e-10


def test_a_run_of_the_size_that_ranks_calls_neighbours_and_compares_the_write_up(tmp_path, monkeypatch):
    from stages import report

    write_grid(tmp_path, seeds=2, **FULL)
    s = summarise(inputs(tmp_path, monkeypatch, {**GRID, "seed": [0, 1]})["cifar10"])
    assert (s.claims["can_rank"], s.claims["reasons"]) == (True, [])
    # paired t over 2 seeds of error differences (in images) -4/-3, -46/-45, -4/-3: t = -7, -91, -7 on 1 df
    assert [t["distinguishable"] for t in s.neighbours] == [False, True, False]
    # write-up over these four: relu+bn > elu > elu+bn > relu; measured: relu+bn > elu+bn > elu > relu
    agree = s.write_up["ranking"]
    assert (agree["pairs_alike"], agree["pairs"], agree["measured_otherwise"]) == (5, 6, "elu+bn > elu")
    lines = "\n".join(report.agreement_lines("cifar10", s.write_up))
    assert "Write-up's ranking: relu+bn > elu > prelu > elu+bn > relu." in lines
    assert "Kendall's τ = +0.67" in lines and "5 of 6 pairs in the write-up's order" in lines
    lines = "\n".join(report.neighbour_lines(s.variants, s.paired, s.neighbours))
    assert "| elu+bn | elu | paired t over 2 seeds | 0.007 | yes |" in lines


def test_dvc_metrics_show_prints_the_ranking_as_a_table_a_terminal_holds_and_nothing_else(study):
    """Was: `dvc metrics show metrics/summary.json`, one row 6,411 characters wide with 245 columns; then a
    key named `error` in each rank file, which DVC reports as a file that failed to load."""
    repo, _ = study
    out = dvc("metrics", "show", "metrics/rank", cwd=repo).stdout  # stdout and stderr together
    variants = json.loads((repo / "metrics/summary.json").read_text())["cifar10"]["variants"]
    ranked = sorted(variants, key=lambda v: variants[v]["rank"])
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].split() == ["Path", "rank", "seeds", "test_error", "test_error_lo", "test_error_up"]
    rows = [line.split() for line in lines[1:]]  # every other line a row: no warning above or below
    assert [row[0] for row in rows] == [f"metrics/rank/cifar10/{i}-{v}.json" for i, v in enumerate(ranked, 1)]
    for row, v in zip(rows, ranked):
        expected = [
            variants[v][k]
            for k in ("rank", "n", "test_error_mean", "test_error_ci_low", "test_error_ci_high")
        ]
        assert [float(x) for x in row[1:]] == pytest.approx(expected, abs=1e-4)  # 5 significant digits
    assert max(map(len, lines)) <= 100


def test_one_seed_gets_a_binomial_interval(study):
    from scipy.stats import binomtest

    repo, _ = study
    v = json.loads((repo / "metrics/summary.json").read_text())["cifar10"]["variants"]["relu+bn"]
    ci = binomtest(50, TEST_IMAGES).proportion_ci(0.95, "wilson")
    assert (v["test_error_ci_low"], v["test_error_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert v["test_error_ci_low"] < 0.25 < v["test_error_ci_high"] and v["test_images"] == TEST_IMAGES


def test_report_gives_the_order_by_loss_as_well(study):
    """The write-up ranked by final loss as well as by test accuracy."""
    repo, _ = study
    summary = json.loads((repo / "metrics/summary.json").read_text())["cifar10"]
    assert summary["ranking_by_test_loss"] == "relu+bn > elu+bn > elu > relu"  # loss = 1.5 + error here
    assert [summary["variants"][v]["loss_rank"] for v in ("relu+bn", "elu+bn", "elu", "relu")] == [1, 2, 3, 4]
    report = (repo / "reports/report.md").read_text()
    assert "By final test loss (the write-up ranked by loss as well): relu+bn > elu+bn > elu > relu" in report


def test_report_states_its_configuration_and_links_the_figures(study):
    repo, _ = study
    report = (repo / "reports/report.md").read_text()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    config = (
        f"Configuration: cifar10, width {params['model']['width']}, 1,000 training images, 3 epochs, "
        f"batch {params['train']['batch_size']}, sgd lr {params['train']['learning_rate']} (×0.1 at "
        f"57%/71%/86% of training), float32, backend tensorflow, 200 test images, seed 0."
    )
    assert config in report
    assert "Seconds per epoch, and so BN's cost ratio, depend on the machine and on what else ran" in report
    assert "| elu+bn | elu | McNemar exact (same test images) | 2.84e-14 |" in report
    for name in ("curves", "test_error", "bias_shift"):
        assert f"](../plots/grid/cifar10_{name}.png)" in report  # relative to reports/
        assert (repo / f"plots/grid/cifar10_{name}.png").stat().st_size > 10_000
    assert not list((repo / "reports").glob("*.png"))  # the figures moved to plots/


def test_figures_tell_activation_bn_and_chance_apart(tmp_path, monkeypatch):
    from stages import figures

    write_grid(tmp_path)
    i = inputs(tmp_path, monkeypatch)["cifar10"]
    fig = figures.plot_curves(i.curves, CLASSES, i.activations, "config line")
    val_accuracy = fig.axes[2]
    lines = {ln.get_label(): ln for ln in val_accuracy.get_lines()}
    # one colour per variant, the one the interactive charts get (figures.colour); BN also by line style
    colours = {v: lines[v].get_color() for v in ("relu", "relu+bn", "elu", "elu+bn")}
    assert colours == {
        v: figures.colour(v.split("+")[0], v.endswith("+bn"), ["relu", "elu"]) for v in colours
    }
    assert len(set(colours.values())) == 4
    assert (lines["relu"].get_linestyle(), lines["relu+bn"].get_linestyle()) == ("--", "-")
    assert lines["chance (1/10)"].get_ydata()[0] == pytest.approx(0.1)
    assert all(t == int(t) for t in val_accuracy.get_xticks())
    assert "config line" in [t.get_text() for t in fig.texts]
    assert fig._suptitle.get_text() == "each curve: one model (one seed per variant)"
    fig = figures.plot_error_and_speed(summarise(i).variants, i.activations, "config line")
    assert fig.axes[0].get_ylabel() == fig.axes[1].get_ylabel() == "test error"
    assert "Wilson" in fig._suptitle.get_text()


def test_colours_follow_the_grids_order_and_any_activation_gets_one():
    """Was: four activations with a fixed hue (HUES), every other name after them."""
    from stages.figures import PAIRS, colour

    grid = ["selu", "gelu", "relu"] + [f"a{i}" for i in range(17)]
    hues = {colour(a, True, grid) for a in grid}
    assert len(hues) == 20 == len(PAIRS)  # twenty activations, twenty hues
    assert colour("selu", True, grid) == colour("relu", True, ["relu", "elu"])  # first of its grid: first hue
    assert colour("selu", True, grid) != colour("selu", False, grid)
    assert colour("swish", False, grid) == colour("selu", False, grid)  # not in the grid: the 21st, the 1st's


def test_figure_legends_cover_no_data_and_name_every_variant(tmp_path, monkeypatch):
    """Were inside the axes, over the curves; then labels beside close points that overlapped (relu+bn and
    lrelu+bn at the same seconds per epoch); now a legend beside the axes, inside the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from stages import figures

    write_grid(tmp_path)
    i = inputs(tmp_path, monkeypatch)["cifar10"]
    for fig in (
        figures.plot_curves(i.curves, CLASSES, i.activations, "config line"),
        figures.plot_bias_shift(i.curves, i.activations, "config line"),
        figures.plot_error_and_speed(summarise(i).variants, i.activations, "config line"),
    ):
        figures.save(fig, tmp_path / "figure.png")  # laid out as the report stage lays it out (and closed)
        renderer = FigureCanvasAgg(fig).get_renderer()
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert len(legends) == 1 and {"relu", "relu+bn", "elu", "elu+bn"} <= {
            t.get_text() for t in legends[0].get_texts()
        }
        box = legends[0].get_window_extent(renderer)
        assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes), box
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), (box, fig.bbox)
        assert not [t for ax in fig.axes for t in ax.texts]  # no labels among the data


def test_bias_shift_puts_the_class_scores_on_their_own_axes(tmp_path, monkeypatch):
    """Was: layer 9 (class scores, up to 4) on the hidden layers' axis, flattening their 0-0.5."""
    from stages import figures

    write_grid(tmp_path, seeds=2)
    i = inputs(tmp_path, monkeypatch, {**GRID, "seed": [0, 1]})["cifar10"]
    fig = figures.plot_bias_shift(i.curves, i.activations, "config line")
    per_layer, scores = fig.axes[1], fig.axes[2]
    assert [len(line.get_xdata()) for line in per_layer.get_lines() if line.get_label() == "relu"] == [8]
    assert "layer 9: the class scores" in scores.get_title()
    relu = next(line for line in scores.get_lines() if line.get_label() == "relu")
    assert list(relu.get_ydata()) == pytest.approx([0.9, 1.9, 2.9])  # act9_mean = 0.9 + epoch, seed mean
    assert fig._suptitle.get_text() == "each curve: the mean over the 2 seeds of a variant"


def test_footers_stay_legible_side_by_side_and_long_text_is_cut(tmp_path):
    """In `dvc plots diff` two revisions' PNGs share a 1,400 px window: each is shown ~650 px wide. Was: a
    7.5 pt footer (~4 px there), and matplotlib's own wrapping of a long footer that ran for minutes."""
    from stages import figures

    for width in (12, 14):  # the test error and curves figures; the bias shift's three panels
        fig, _ = figures.figure("config line", 1, 2, (width, 5))
        shown_px = fig.texts[0].get_fontsize() * figures.DPI / 72 * 650 / (width * figures.DPI)
        assert shown_px >= 8.5, width
    fig, _ = figures.figure("a " * 500_000, 1, 2, (12, 5))
    (footer,) = fig.texts
    assert len(footer.get_text()) <= figures.FOOTER_CHARS + 20 and footer.get_text().endswith("…")
    figures.save(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_missing_predictions_fall_back_to_counts(tmp_path, monkeypatch):
    write_grid(tmp_path)
    i = inputs(tmp_path, monkeypatch)["cifar10"]
    del i.correct["elu", 0]
    neighbours = summarise(i).neighbours
    assert neighbours[1]["test"].startswith("Fisher") and neighbours[0]["test"].startswith("McNemar")
    assert neighbours[1]["p"] < 1e-5  # 27 % against 50 % errors on 200 images


@pytest.mark.e2e
def test_plots_diff_shows_each_figure_of_two_revisions(study):
    repo, _ = study
    write_entry(repo, "relu", False, 0, 180)  # relu now first: a new ranking
    dvc("repro", "--single-item", "report", cwd=repo)
    out = dvc("plots", "diff", "HEAD", "--json", cwd=repo).stdout  # after a warning: no experiment curves
    shown = json.loads(out.splitlines()[-1])["data"]["plots/grid/cifar10_test_error.png"]
    images = {d["revisions"][0]: Path(d["url"]).read_bytes() for d in shown}
    assert sorted(images) == ["HEAD", "workspace"] and images["HEAD"] != images["workspace"]


def test_several_seeds_are_tested_over_seeds_with_mcnemar_beside(tmp_path, monkeypatch):
    """Two seeds: Wilcoxon cannot reject, so the paired t-test decides; McNemar on each seed is reported
    beside."""
    from stages import report

    right = {
        ("relu", True): (150, 152),
        ("elu", True): (120, 121),
        ("elu", False): (100, 102),
        ("relu", False): (99, 60),
    }
    for (act, bn), per_seed in right.items():
        for seed, k in enumerate(per_seed):
            write_entry(tmp_path, act, bn, seed, k, **FULL)
    s = summarise(inputs(tmp_path, monkeypatch, {**GRID, "seed": [0, 1]})["cifar10"])
    assert s.ranking == ["relu+bn", "elu+bn", "elu", "relu"] and list(s.variants.n) == [2, 2, 2, 2]
    first, _, last = s.neighbours
    assert first["test"] == "paired t over 2 seeds" and first["distinguishable"] is True  # 30/31: t = 61
    assert first["mcnemar_p_per_seed"] == {"0": pytest.approx(2 * 0.5**30), "1": pytest.approx(2 * 0.5**31)}
    assert first["mcnemar_same_way"] and first["mcnemar_all_below_alpha"]
    assert last["test"] == "paired t over 2 seeds" and last["distinguishable"] is False  # 1 and 42 images
    assert last["mcnemar_same_way"] and not last["mcnemar_all_below_alpha"]
    lines = "\n".join(report.neighbour_lines(s.variants, s.paired, s.neighbours))
    assert (
        "McNemar p per seed (same test images)" in lines and "Wilcoxon cannot reach p < 0.05 below 6" in lines
    )


KEY = "cifar10-relu-True-0"
M, R, S = f"metrics/grid/{KEY}.json", f"results/grid/{KEY}.json", f"models/grid/{KEY}.json"
LOSS = f"dvclive/grid/{KEY}/plots/metrics/train/loss.tsv"
EVALUATE, TRAIN = f"rebuild it: dvc repro -f evaluate@{KEY}", f"rebuild it: dvc repro -f train@{KEY}"
RULE = "a plain name of up to 40 letters, digits and _.+- (e.g. float32)"


def edit(path, change):
    """path's JSON object after change(obj), written back as JSON (Python's json writes NaN and Infinity)."""
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def shift_error(r):  # one right image of class 0 predicted as class 1: 51 errors where the metrics say 50
    r["confusion"][0][0] -= 1
    r["confusion"][0][1] += 1


def swap_mistakes(r):  # the same errors in other cells: the error holds, the predictions do not give it
    c = r["confusion"]
    c[0][1], c[0][2] = c[0][1] - 1, c[0][2] + 1


# name: (file, its damage: a function of the JSON object or the file's new text, the line expected)
DAMAGE = {
    "no train_images": (S, "{}", f"{S}: not what its stage writes (no 'train_images'); {TRAIN}"),
    "summary not JSON": (
        S,
        "not json",
        f"{S}: not JSON (JSONDecodeError: Expecting value: line 1 column 1 (char 0)); {TRAIN}",
    ),
    "metrics missing": (M, None, f"{M}: missing; {EVALUATE}"),
    "metrics a folder": (M, "folder", f"{M}: a folder, not a file; {EVALUATE}"),
    "negative error": (
        M,
        lambda m: m.update(test_error=-5),
        f"{M}: test_error must be a finite number in [0, 1]",
    ),
    "error 1e308": (
        M,
        lambda m: m.update(test_error=1e308),
        f"{M}: test_error must be a finite number in [0, 1]",
    ),
    "error a string": (M, lambda m: m.update(test_error="0.25"), f"{M}: test_error must be a finite number"),
    "error NaN": (
        M,
        lambda m: m.update(test_error=float("nan")),
        f"{M}: not JSON (ValueError: NaN is not JSON)",
    ),
    "loss Infinity": (
        M,
        lambda m: m.update(test_loss=float("inf")),
        f"{M}: not JSON (ValueError: Infinity is",
    ),
    "loss 1e308": (
        M,
        lambda m: m.update(test_loss=1e308),
        f"{M}: test_loss must be a finite number in [0, 28]",
    ),
    "seconds negative": (
        M,
        lambda m: m.update(seconds_per_epoch=-1),
        f"{M}: seconds_per_epoch must be a finite",
    ),
    "diverged a string": (M, lambda m: m.update(diverged="no"), f"{M}: diverged must be true or false"),
    "confusion negative": (
        R,
        lambda r: r["confusion"][0].__setitem__(0, -100_000),
        f"{R}: confusion must be a 10 x 10 matrix of counts (a row and a column per class)",
    ),
    "confusion ragged": (R, lambda r: r["confusion"][3].pop(), f"{R}: confusion must be a 10 x 10 matrix"),
    "confusion 100k deep": (
        R,
        '{"classes": ["a", "b"], "confusion": ' + "[" * 100_000 + "]" * 100_000 + "}",
        f"{R}: nested too deep for what its stage writes; {EVALUATE}",
    ),
    "predictions text": (
        R,
        lambda r: r.update(predictions="abc"),
        f"{R}: predictions must be a list of 200 class indices in [0, 10), one per test image; {EVALUATE}",
    ),
    "10 predictions": (
        R,
        lambda r: r.update(predictions=r["predictions"][:10]),
        f"{R}: predictions must be a list of 200",
    ),
    "labels out of range": (
        R,
        lambda r: r["labels"].__setitem__(0, 10),
        f"{R}: labels must be a list of 200",
    ),
    "confusion against the error": (
        R,
        shift_error,
        f"{R}: confusion gives a test error of 0.2550, its metrics file 0.2500; {EVALUATE}",
    ),
    "confusion against the predictions": (
        R,
        swap_mistakes,
        f"{R}: confusion is not the matrix its labels and predictions give; {EVALUATE}",
    ),
    "class name with a newline": (
        R,
        lambda r: r["classes"].__setitem__(0, "cat\n## heading"),
        f"{R}: classes must be a list of 2 to 1,000 distinct printable names of up to 64 characters",
    ),
    "class names repeated": (R, lambda r: r["classes"].__setitem__(1, "c0"), f"{R}: classes must be a list"),
    "precision with a newline": (
        S,
        lambda s: s.update(precision="float32\n## heading"),
        f"{S}: precision must be {RULE}",
    ),
    "precision with a pipe": (S, lambda s: s.update(precision="a|b"), f"{S}: precision must be {RULE}"),
    "backend with ESC": (S, lambda s: s.update(backend="\x1b[31mjax"), f"{S}: backend must be {RULE}"),
    "backend markup": (
        S,
        lambda s: s.update(backend="<img src=x onerror=alert(1)>"),
        f"{S}: backend must be",
    ),
    "backend of 1 MB": (S, lambda s: s.update(backend="x" * 2**20), f"{S}: backend must be {RULE}; {TRAIN}"),
    "curve with script": (
        LOSS,
        "step\tloss\n0\t</script><script>alert(1)</script>\n",
        f"{LOSS}: not a curve as dvclive writes it (Unable to parse string",
    ),
    "curve without step": (
        LOSS,
        "epoch\tloss\n0\t1.0\n",
        f"{LOSS}: not a curve as dvclive writes it (no step or loss",
    ),
    "curve not UTF-8": (LOSS, b"step\tloss\n0\t1.0\xe9\n", f"{LOSS}: not UTF-8 text (byte 15); {TRAIN}"),
    "curve steps repeated": (
        LOSS,
        "step\tloss\n0\t1.0\n0\t2.0\n",
        f"{LOSS}: step must be distinct whole numbers",
    ),
}


def damage(folder, name):
    path, how, expected = DAMAGE[name]
    p = folder / path
    if how is None:
        p.unlink()
    elif how == "folder":
        p.unlink()
        p.mkdir()
    elif callable(how):
        edit(p, how)
    else:
        p.write_bytes(how if isinstance(how, bytes) else how.encode())
    return expected


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_input_is_one_line_naming_the_file_and_the_stage_that_rebuilds_it(
    tmp_path, monkeypatch, name
):
    """Was: -5 ranked first, NaN and 1e308 accepted, a negative confusion matrix printed, predictions "abc"
    made McNemar's p 0, a newline or markup in a text field reached report.md, a script in a curve reached
    Vega."""
    from stages.cli import UserError

    write_grid(tmp_path)
    expected = damage(tmp_path, name)
    with pytest.raises(UserError) as e:
        inputs(tmp_path, monkeypatch)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value), str(e.value)[:300]
    assert str(e.value).endswith((EVALUATE, TRAIN)) and len(str(e.value)) < 400


def test_a_file_over_its_limit_is_refused_unparsed(tmp_path, monkeypatch):
    from stages.cli import UserError
    from stages.report_inputs import MAX_JSON_BYTES

    write_grid(tmp_path)
    (tmp_path / M).write_text(" " * MAX_JSON_BYTES + "{}")  # valid JSON, were it parsed
    with pytest.raises(UserError, match=rf"^{M}: over 16 MiB, far more than its stage writes; {EVALUATE}$"):
        inputs(tmp_path, monkeypatch)
    (tmp_path / M).unlink()
    (tmp_path / M).symlink_to("/dev/zero")  # endless: read to the limit and refused
    tracemalloc.start()
    with pytest.raises(UserError, match=rf"^{M}: over 16 MiB"):
        inputs(tmp_path, monkeypatch)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * MAX_JSON_BYTES, peak  # the limit read once, nothing parsed


def test_models_of_one_dataset_must_share_their_test_images(tmp_path, monkeypatch):
    from stages.cli import UserError

    write_grid(tmp_path)
    for key in ("results", "metrics"):  # elu+bn tested on 150 of the 200 images: no McNemar with the others
        p = tmp_path / f"{key}/grid/cifar10-elu-True-0.json"
        obj = json.loads(p.read_text())
        if key == "results":
            obj["labels"], obj["predictions"] = obj["labels"][:150], obj["predictions"][:150]
            c = np.zeros((CLASSES, CLASSES), int)
            np.add.at(c, (obj["labels"], obj["predictions"]), 1)
            obj["confusion"] = c.tolist()
        else:
            obj.update(test_images=150, test_error=4 / 150)
        p.write_text(json.dumps(obj))
    with pytest.raises(UserError) as e:
        inputs(tmp_path, monkeypatch)
    assert str(e.value) == (
        "results/grid/cifar10-elu-True-0.json: 150 test images where "
        "results/grid/cifar10-relu-False-0.json has 200; rebuild it: dvc repro -f evaluate@cifar10-elu-True-0"
    )


def test_only_known_numeric_curves_reach_plots_curves(tmp_path, monkeypatch):
    """Was: a text value of any dvclive TSV copied into plots/curves, which `dvc plots show` embeds in a
    script."""
    from stages.report import write_curves

    write_grid(tmp_path)
    evil = tmp_path / f"dvclive/grid/{KEY}/plots/metrics/train/note.tsv"  # not a curve the model logs
    evil.write_text("step\tnote\n0\t</script><script>alert(1)</script>\n")
    (tmp_path / LOSS).write_text("step\tloss\n0\t2.0\n1\tinf\n2\t-inf\n")  # diverged: no number
    i = inputs(tmp_path, monkeypatch)["cifar10"]
    write_curves(tmp_path / "curves.tsv", i)
    text = (tmp_path / "curves.tsv").read_text()
    assert "<" not in text and "note" not in text and "inf" not in text
    c = pd.read_csv(tmp_path / "curves.tsv", sep="\t")
    assert set(c.select_dtypes(exclude="number").columns) == {"variant", "colour"}
    assert set(c.variant) == {"relu", "relu+bn", "elu", "elu+bn"}
    assert set(c.colour.str.fullmatch(r"#[0-9a-f]{6}")) == {True}


def test_a_damaged_published_run_is_refused_in_one_line_with_nothing_written(tmp_path):
    """`python -m stages.report FOLDER`: one line naming the file, exit 2, no output of the report at all."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["grid"], params["train"]["validation"] = GRID, 40
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_grid(tmp_path)
    edit(tmp_path / S, lambda s: s.update(precision="x" * 10**6))  # took minutes in the figures' footers
    p = subprocess.run(
        [sys.executable, "-m", "stages.report", str(tmp_path)],
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == f"error: {S}: precision must be {RULE}; {TRAIN}\n"
    assert not [f for d in ("reports", "plots", "metrics/rank") for f in (tmp_path / d).glob("*")]
    assert not (tmp_path / "metrics/summary.json").exists()


def test_the_curves_module_knows_the_models_layer_names():
    from stages.model import ACT_PREFIX
    from stages.report_inputs import ACT

    assert ACT == ACT_PREFIX  # report_inputs cannot import stages.model: the report stays without Keras


def test_a_diverged_model_is_read_with_its_gaps(tmp_path, monkeypatch):
    """What train writes for a model whose loss diverged in its first epoch: no seconds per epoch (null), no
    epoch completed, NaN in its curves. Read, not refused; counted as diverged; no text in plots/curves."""
    from stages.report import DatasetReport, summary_entry, write_curves

    write_grid(tmp_path)
    edit(tmp_path / M, lambda m: m.update(seconds_per_epoch=None, epochs=0, diverged=True))
    (tmp_path / LOSS).write_text("step\tloss\n0\tnan\n1\tnan\n2\tnan\n")
    i = inputs(tmp_path, monkeypatch)["cifar10"]
    s = summarise(i)
    assert s.variants.diverged["relu+bn"] == 1 and np.isnan(s.variants.seconds_per_epoch["relu+bn"])
    write_curves(tmp_path / "curves.tsv", i)
    assert "nan" not in (tmp_path / "curves.tsv").read_text().lower()
    variants = summary_entry(DatasetReport(i, s, "config line"))["variants"]
    assert variants["relu+bn"]["seconds_per_epoch"] is None and variants["relu+bn"]["diverged"] == 1


def test_the_report_imports_neither_keras_nor_the_training_code():
    """The report never waits seconds for TensorFlow, and loads no archive reader or model code (the params
    check it shares names the activations and backends without them: stages.backend loads no Keras)."""
    code = "import sys, stages.report; print(' '.join(sorted(sys.modules)))"
    p = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    loaded = set(p.stdout.split())
    assert "stages.report_inputs" in loaded and "stages.statistics" in loaded, p.stderr[-2000:]
    assert not loaded & {"keras", "tensorflow", "jax", "stages.model", "stages.layers", "stages.cifar"}
