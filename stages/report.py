"""report: rank the grid's variants per dataset, say which neighbours the data can tell apart, BN's cost, bias
shift.

Reads only the entries in the current params.yaml grid (old files of removed entries are ignored).
Outputs: metrics/summary.json; reports/report.md, a table a person reads; plots/grid/<dataset>_*.png, the
figures (image plots: `dvc plots diff` shows two revisions side by side); plots/curves/<dataset>.tsv, the
curves of every variant in one file for `dvc plots`. Every figure and the report state the configuration
behind them.

    python -m stages.report                              # what `dvc repro report` runs, in the project's root
    python -m stages.report docs/results/cifar10-cpu     # again from a published run's files (same layout)
"""

import argparse
import itertools
import os
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from scipy import stats

from stages.cli import UserError, cli
from stages.entry import grid_entries, read_json, variant
from stages.outputs import atomic_path, write_json
from stages.params import count, load

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

REPORT, FIGURES, CURVES = Path("reports/report.md"), Path("plots/grid"), Path("plots/curves")
RANKING = Path("metrics/rank")  # <dataset>/<rank>-<variant>.json: `dvc metrics show metrics/rank`, a row each
ALPHA = 0.05  # neighbours whose test gives p < ALPHA are called distinguishable
LEVEL = 0.95  # confidence level of the error bars
HUES = (
    "relu",
    "lrelu",
    "prelu",
    "elu",
)  # activations with a fixed colour (colour()), in tab20's order of hues
TIMING = (
    "Seconds per epoch, and so BN's cost ratio, depend on the machine and on what else ran on it meanwhile: "
    "compare them within one run on an otherwise idle machine, not across runs or machines."
)
WILCOXON_SEEDS = 6  # below 6 seeds Wilcoxon's signed-rank test cannot reach p < 0.05 (n = 5: p >= 0.0625)
# What the write-up this project follows reported: its CIFAR-10 ranking (best first) and its CIFAR-100 (fine
# labels) test error for relu+bn after ~50k steps. Every report says how far its own run agrees.
WRITE_UP = {
    "cifar10": {"ranking": ["relu+bn", "elu", "prelu", "elu+bn", "relu"]},
    "cifar100": {"test_error": {"relu+bn": 0.36}},
}


def read_curves(live_dir, fix):
    """dvclive's per-metric TSVs (plots/metrics/{train,eval}/<name>.tsv) as one frame, one row per epoch."""
    frames = []
    for f in sorted(Path(live_dir, "plots/metrics").rglob("*.tsv")):
        split, name = f.parent.name, f.stem
        col = f"val_{name}" if split == "eval" else name
        frames.append(pd.read_csv(f, sep="\t").set_index("step")[[name]].rename(columns={name: col}))
    missing = [
        k for k in ("loss", "accuracy") if not any(col in (k, f"val_{k}") for fr in frames for col in fr)
    ]
    if missing:  # an interrupted or damaged training: every model must bring its curves
        raise UserError(
            f"{live_dir}: no {missing[0]} curve (dvclive's plots/metrics/*/{missing[0]}.tsv); {fix}"
        )
    df = pd.concat(frames, axis=1).reset_index().rename(columns={"step": "epoch"})
    df["epoch"] += 1  # dvclive counts steps from 0; epochs are counted from 1
    return df


def layer_means(c):
    """The curves' per-layer mean activation columns (act1_mean .. act9_mean), in layer order."""
    from stages.model import ACT_PREFIX  # after cli() set up the stage (model imports Keras)

    found = (k for k in c if re.fullmatch(rf"{ACT_PREFIX}\d+_mean", k))
    return sorted(found, key=lambda k: int(k[len(ACT_PREFIX) : -len("_mean")]))


def collect(grid):
    """One row per trained model of the current grid, one curves frame, and which test images each model got
    right ({(dataset, variant, seed): bool array}, in test-set order) where its results file lists them."""
    rows, curves, correct = [], [], {}
    for e in grid_entries({"grid": grid}):
        p, v, ds, act, bn, seed = e.paths, e.label, e.dataset, e.activation, e.batch_norm, e.seed
        evaluate, train = (f"rebuild it: dvc repro -f {stage}@{e.key}" for stage in ("evaluate", "train"))
        m = read_json(p["metrics"], ["test_error", "test_loss", "seconds_per_epoch"], evaluate)
        r = read_json(p["results"], ["confusion", "classes"], evaluate)
        summary = read_json(p["summary"], ["train_images"], train)
        confusion = np.asarray(r["confusion"])
        rows.append(
            {
                "dataset": ds,
                "variant": v,
                "activation": act,
                "batch_norm": bn,
                "seed": seed,
                **m,
                "test_images": int(confusion.sum()),
                "test_errors": int(confusion.sum() - confusion.trace()),
                "classes": len(r["classes"]),
                "train_images": summary.get("train_images"),
                "precision": summary.get("precision"),
                "backend": summary.get("backend"),
            }
        )
        if "predictions" in r and "labels" in r:
            correct[ds, v, seed] = np.asarray(r["predictions"]) == np.asarray(r["labels"])
        c = read_curves(p["live"], train)
        c["act_mean"] = c[layer_means(c)[:-1]].mean(
            axis=1
        )  # hidden layers only: the class layer's is a score
        curves.append(
            c.assign(
                dataset=ds,
                variant=v,
                activation=act,
                batch_norm=bn,
                seed=seed,
                colour=colour(act, bn, grid["activation"]),
            )
        )  # for the interactive charts
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True), correct


def paired_tests(df, ranking):
    """Pairs of variants compared seed by seed on test error (needs >= 2 seeds)."""
    errors = df.pivot_table(index="seed", columns="variant", values="test_error")
    if len(errors) < 2:
        return []
    out = []
    for a, b in itertools.combinations(ranking, 2):
        d = (errors[a] - errors[b]).dropna()
        if len(d) < 2:
            continue
        w = stats.wilcoxon(d).pvalue if np.any(d != 0) else 1.0
        t = stats.ttest_rel(errors[a], errors[b]).pvalue if np.std(d) > 0 else 1.0
        out.append(
            {
                "better": a,
                "worse": b,
                "n": int(len(d)),
                "mean_error_difference": float(d.mean()),
                "wilcoxon_p": float(w),
                "paired_t_p": float(t),
            }
        )
    return out


def mcnemar_exact(right_a, right_b):
    """McNemar's exact test: of the test images exactly one of the two models got right, is the split
    50:50?"""
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {
        "test": "McNemar exact (same test images)",
        "only_better_right": only_a,
        "only_worse_right": only_b,
        "p": float(p),
    }


def per_seed_mcnemar(d, a, b, correct):
    """McNemar's p of a against b on each seed both have with per-image predictions ({seed: p}), and whether a
    got more of the discordant test images right on every one of them."""
    ds = d.dataset.iloc[0]
    seeds = sorted(set(d[d.variant == a].seed) & set(d[d.variant == b].seed))
    tests = {
        int(s): mcnemar_exact(correct[ds, a, s], correct[ds, b, s])
        for s in seeds
        if (ds, a, s) in correct and (ds, b, s) in correct
    }
    same_way = bool(tests) and all(t["only_better_right"] > t["only_worse_right"] for t in tests.values())
    return {s: t["p"] for s, t in tests.items()}, same_way


def neighbour_test(d, a, b, tests, correct):
    """Can the data tell variant a from b, its successor in the ranking? Several seeds: a paired test over the
    seeds (Wilcoxon from WILCOXON_SEEDS seeds on, Student's paired t below, where Wilcoxon cannot reject),
    with McNemar's test on the same test images per seed beside it; one seed: McNemar, or, without per-image
    predictions, Fisher's exact test on the error counts (unpaired, so weaker)."""
    pair = next((t for t in tests if (t["better"], t["worse"]) == (a, b)), None)
    if pair:
        wilcoxon = pair["n"] >= WILCOXON_SEEDS
        out = {
            "test": f"{'Wilcoxon signed-rank' if wilcoxon else 'paired t'} over {pair['n']} seeds",
            "p": pair["wilcoxon_p" if wilcoxon else "paired_t_p"],
        }
        mcnemar, same_way = per_seed_mcnemar(d, a, b, correct)
        if mcnemar:
            out.update(
                mcnemar_p_per_seed={str(k): v for k, v in mcnemar.items()},
                mcnemar_same_way=same_way,
                mcnemar_all_below_alpha=same_way and max(mcnemar.values()) < ALPHA,
            )
    else:
        ra, rb = (d[d.variant == v].iloc[0] for v in (a, b))
        seed = ra.seed
        if (ra.dataset, a, seed) in correct and (rb.dataset, b, seed) in correct:
            out = mcnemar_exact(correct[ra.dataset, a, seed], correct[rb.dataset, b, seed])
        else:
            table = [
                [ra.test_errors, ra.test_images - ra.test_errors],
                [rb.test_errors, rb.test_images - rb.test_errors],
            ]
            out = {
                "test": "Fisher exact on error counts (no per-image predictions)",
                "p": float(stats.fisher_exact(table).pvalue),
            }
    return {"better": a, "worse": b, **out, "distinguishable": bool(out["p"] < ALPHA)}


def error_interval(g):
    """LEVEL confidence interval of a variant's test error: one seed, binomial (Wilson) over its test images;
    several, Student's t over the seeds' errors."""
    if len(g) == 1:
        ci = stats.binomtest(int(g.test_errors.iloc[0]), int(g.test_images.iloc[0])).proportion_ci(
            LEVEL, "wilson"
        )
        return pd.Series({"test_error_ci_low": ci.low, "test_error_ci_high": ci.high})
    low, high = stats.t.interval(LEVEL, len(g) - 1, loc=g.test_error.mean(), scale=stats.sem(g.test_error))
    return pd.Series({"test_error_ci_low": low, "test_error_ci_high": high})


def summarise(df, correct):
    g = df.groupby("variant")
    s = pd.DataFrame(
        {
            "n": g.size(),
            "test_error_mean": g.test_error.mean(),
            "test_error_std": g.test_error.std(ddof=1),
            "test_loss_mean": g.test_loss.mean(),
            "seconds_per_epoch": g.seconds_per_epoch.mean(),
            "train_seconds": g.train_seconds.mean(),
            "diverged": g.diverged.sum().astype(int),
            "test_images": g.test_images.first(),
            "activation": g.activation.first(),
            "batch_norm": g.batch_norm.first(),
        }
    )  # std: NaN (null) for one seed
    s = s.join(g[["test_error", "test_errors", "test_images"]].apply(error_interval))
    s = s.sort_values("test_error_mean")
    s.insert(0, "rank", range(1, len(s) + 1))
    ranking = list(s.index)
    bn_cost = {}
    for act, pair in s.groupby("activation"):
        if set(pair.batch_norm) == {False, True}:
            off, on = (pair[pair.batch_norm == v].iloc[0] for v in (False, True))
            bn_cost[act] = {
                "seconds_per_epoch_without": off.seconds_per_epoch,
                "seconds_per_epoch_with": on.seconds_per_epoch,
                "ratio": on.seconds_per_epoch / off.seconds_per_epoch,
                "test_error_change": on.test_error_mean - off.test_error_mean,
            }
    tests = paired_tests(df, ranking)
    neighbours = [neighbour_test(df, a, b, tests, correct) for a, b in zip(ranking, ranking[1:])]
    return s, ranking, tests, neighbours, bn_cost


def agreement(ds, s):
    """Does this run reproduce the write-up? Kendall's tau between its ranking and this run's over the
    variants both have (1: the same order, -1: reversed, ~0: unrelated), the pairs ordered alike, and the
    write-up's test errors beside this run's intervals. Dicts and strings only, so `dvc metrics show` keeps
    them."""
    ref, out = WRITE_UP.get(ds, {}), {}
    common = [v for v in ref.get("ranking", []) if v in s.index]
    if len(common) >= 2:
        tau = stats.kendalltau(range(len(common)), [s.loc[v, "rank"] for v in common])
        pairs = list(itertools.combinations(common, 2))  # (a, b): the write-up has a ahead of b
        other = [f"{b} > {a}" for a, b in pairs if s.loc[a, "rank"] > s.loc[b, "rank"]]
        out["ranking"] = {
            "write_up": " > ".join(ref["ranking"]),
            "variants": len(common),
            "measured": " > ".join(sorted(common, key=lambda v: s.loc[v, "rank"])),
            "kendall_tau": float(tau.statistic),
            "kendall_p": float(tau.pvalue),
            "pairs": len(pairs),
            "pairs_alike": len(pairs) - len(other),
            "measured_otherwise": ", ".join(other),
        }
    for v, error in ref.get("test_error", {}).items():
        if v in s.index:
            r = s.loc[v]
            out.setdefault("test_error", {})[v] = {
                "write_up": error,
                "measured": float(r.test_error_mean),
                "ci_low": float(r.test_error_ci_low),
                "ci_high": float(r.test_error_ci_high),
                "inside_interval": bool(r.test_error_ci_low <= error <= r.test_error_ci_high),
            }
    return out


def agreement_lines(ds, a):
    """The report's paragraph on the write-up: its claims beside this run's, whatever this run's size."""
    lines = ["", "### Against the write-up", ""]
    if "ranking" in a:
        r = a["ranking"]
        lines += [
            f"Write-up's ranking: {r['write_up']}. This run, over the {r['variants']} variants both have: "
            f"{r['measured']}. Kendall's τ = {r['kendall_tau']:+.2f} (p = {r['kendall_p']:.2g}; +1: the "
            f"same order, −1: reversed, 0: unrelated); {r['pairs_alike']} of {r['pairs']} pairs in the "
            f"write-up's order"
            + (f"; ordered otherwise here: {r['measured_otherwise']}." if r["measured_otherwise"] else ".")
        ]
    for v, e in a.get("test_error", {}).items():
        lines += [
            f"Write-up's test error of {v}: {e['write_up']:.2f}; this run: {e['measured']:.4f} "
            f"({LEVEL:.0%} CI {e['ci_low']:.4f}–{e['ci_high']:.4f}: the write-up's value is "
            f"{'inside' if e['inside_interval'] else 'outside'} it)."
        ]
    if len(lines) == 3:
        lines += [f"The write-up reports nothing on {ds} that this run can be compared with."]
    return lines


def configuration(params, d):
    """What produced the numbers, in one line: a figure or table without it cannot be compared with
    another."""
    t = params["train"]

    def values(col, fmt="{}"):  # the models' own record; several values are listed, absent ones said so
        found = sorted({fmt.format(v) for v in d[col].dropna()}) if col in d else []
        return "/".join(found) or "not recorded"

    schedule = {
        "step": f"×{t['lr_gamma']} at {'/'.join(f'{f:.0%}' for f in t['lr_drops'])} of training",
        "cosine": "cosine decay",
        "constant": "constant",
    }[t["lr_schedule"]]
    seeds = sorted(d.seed.unique())
    return (
        f"{d.dataset.iloc[0]}, width {params['model']['width']}, {values('train_images', '{:,}')} training "
        f"images, {count(values('epochs'), 'epoch')}, batch {t['batch_size']}, {t['optimizer']} "
        f"lr {t['learning_rate']} ({schedule}), {values('precision')}, backend {values('backend')}, "
        f"{values('test_images', '{:,}')} test images, {'seed' if len(seeds) == 1 else 'seeds'} "
        f"{', '.join(map(str, seeds))}"
    )


def colour(activation, batch_norm, activations):
    """A variant's colour, the same in every PNG figure and, through the colour column of plots/curves, in the
    interactive charts (.dvc/plots/variants.json): a hue per activation (HUES first, the grid's others after
    them in alphabetical order), dark with BN and light without (matplotlib's tab20 pairs)."""
    order = list(HUES) + sorted(set(activations) - set(HUES))
    return matplotlib.colors.to_hex(
        plt.cm.tab20.colors[2 * (order.index(activation) % 10) + (not batch_norm)]
    )


def style(activation, batch_norm, activations):
    """Colour = variant (hue = activation), line style = BN, the same in every figure."""
    return {
        "color": colour(activation, batch_norm, activations),
        "ls": "-" if batch_norm else "--",
        "label": variant(activation, batch_norm),
    }


def legend_outside(ax):
    """The legend to the right of ax, outside it, where it covers no data (save()'s tight layout makes
    room)."""
    ax.legend(
        fontsize=8,
        title="solid: with BN, dashed: without",
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
        borderaxespad=0,
    )


def figure(config, nrows, ncols, **kw):
    """A figure that states the configuration behind it at its foot."""
    fig, axes = plt.subplots(nrows, ncols, **kw)
    fig.text(0.5, 0.005, config, ha="center", va="bottom", fontsize=7.5, color="dimgrey", wrap=True)
    return fig, axes


def save(fig, path):
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(c, classes, config):
    fig, axes = figure(config, 2, 2, figsize=(12, 8), sharex=True)
    mean = c.groupby(["activation", "batch_norm", "epoch"]).mean(numeric_only=True).reset_index()
    for (act, bn), v in mean.groupby(["activation", "batch_norm"]):
        for row, metric in enumerate(("loss", "accuracy")):
            for col, key in enumerate((f"val_{metric}", metric)):
                if key in v:
                    axes[row, col].plot(
                        v.epoch, v[key], marker="o", ms=3, **style(act, bn, c.activation.unique())
                    )
    for col, images in enumerate(("validation", "training")):
        axes[1, col].axhline(1 / classes, color="grey", ls=":", lw=1, label=f"chance (1/{classes})")
        for row, metric in enumerate(("loss (cross-entropy)", "accuracy")):
            axes[row, col].set(ylabel=metric, title=f"{metric}, {images} images")
            axes[row, col].grid(alpha=0.3)
        axes[1, col].set_xlabel("epoch")
        axes[1, col].xaxis.set_major_locator(MaxNLocator(integer=True))
    legend_outside(axes[1, 1])
    return fig


def plot_error_and_speed(s, config):
    """Test error with its confidence interval, by rank (left) and against the time an epoch takes (right)."""
    fig, (a1, a2) = figure(config, 1, 2, figsize=(12, 4.8))
    yerr = [s.test_error_mean - s.test_error_ci_low, s.test_error_ci_high - s.test_error_mean]
    looks = [style(r.activation, r.batch_norm, s.activation.unique()) for _, r in s.iterrows()]
    a1.bar(
        s.index,
        s.test_error_mean,
        yerr=yerr,
        capsize=4,
        color=[k["color"] for k in looks],
        hatch=[None if k["ls"] == "-" else "//" for k in looks],
        edgecolor="white",
    )
    a1.tick_params(axis="x", rotation=45)
    a1.set(ylabel="test error", title="test error by rank (hatched: without BN)")
    for (v, r), k in zip(s.iterrows(), looks):
        a2.errorbar(
            r.seconds_per_epoch,
            r.test_error_mean,
            yerr=[[yerr[0][v]], [yerr[1][v]]],
            capsize=3,
            marker="o" if k["ls"] == "-" else "s",
            mfc=k["color"] if k["ls"] == "-" else "white",
            color=k["color"],
        )
        a2.annotate(
            v, (r.seconds_per_epoch, r.test_error_mean), xytext=(6, 6), textcoords="offset points", fontsize=8
        )
    a2.set(
        xlabel="seconds per epoch (depends on the machine's load)",
        ylabel="test error",
        title="test error against training time (open: without BN)",
    )
    ns = sorted(s.n.unique())
    how = (
        f"binomial (Wilson) over {s.test_images.iloc[0]:,} test images"
        if ns == [1]
        else f"Student's t over seeds (n = {'/'.join(map(str, ns))} seeds per variant)"
        if 1 not in ns
        else "binomial for 1 seed, Student's t over seeds otherwise"
    )
    fig.suptitle(f"bars: {LEVEL:.0%} confidence interval, {how}", fontsize=9)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    return fig


def plot_bias_shift(c, config):
    """Clevert et al.: ELU keeps mean activations near zero. Measured, not assumed."""
    fig, (a1, a2) = figure(config, 1, 2, figsize=(12, 4.8))
    mean = c.groupby(["activation", "batch_norm", "epoch"]).mean(numeric_only=True).reset_index()
    layers = layer_means(c)
    for (act, bn), v in mean.groupby(["activation", "batch_norm"]):
        look = style(act, bn, c.activation.unique())
        a1.plot(v.epoch, v.act_mean, marker="o", ms=3, **look)
        a2.plot(range(1, len(layers) + 1), [v.iloc[-1][k] for k in layers], marker="o", **look)
    a1.set(xlabel="epoch", ylabel="mean activation (hidden layers)", title="bias shift during training")
    a1.xaxis.set_major_locator(MaxNLocator(integer=True))
    a2.set(
        xlabel="activation layer",
        ylabel="mean activation",
        title=f"per layer, last epoch (layer {len(layers)}: class scores)",
    )
    for ax in (a1, a2):
        ax.axhline(0, color="grey", lw=0.8)
        ax.grid(alpha=0.3)
    legend_outside(a2)
    return fig


def neighbour_lines(s, tests, neighbours):
    """Which neighbours in the ranking the data can tell apart: the test of each, and the paired tests over
    seeds."""
    per_seed = any("mcnemar_p_per_seed" in t for t in neighbours)
    lines = [
        f"Which neighbours in the ranking the data can tell apart (p < {ALPHA}):",
        "",
        "| better | worse | test | p | distinguishable |"
        + (" McNemar p per seed (same test images) |" if per_seed else ""),
        "|---|---|---|---:|---|" + ("---|" if per_seed else ""),
    ]
    for t in neighbours:
        seeds = ", ".join(f"{p:.2g}" for p in t.get("mcnemar_p_per_seed", {}).values())
        if seeds and not t["mcnemar_same_way"]:
            seeds += " (not the same way on every seed)"
        lines.append(
            f"| {t['better']} | {t['worse']} | {t['test']} | {t['p']:.3g} | "
            f"{'yes' if t['distinguishable'] else 'no'} |" + (f" {seeds or '–'} |" if per_seed else "")
        )
    if tests:
        lines += [
            "",
            "Paired tests over seeds, neighbours (Wilcoxon cannot reach p < 0.05 below "
            f"{WILCOXON_SEEDS} seeds; the paired t-test assumes normal seed-to-seed differences):",
            "",
            "| better | worse | n | error difference | Wilcoxon p | paired t p |",
            "|---|---|---:|---:|---:|---:|",
        ]
        adjacent = set(zip(s.index, s.index[1:]))
        lines += [
            f"| {t['better']} | {t['worse']} | {t['n']} | {t['mean_error_difference']:+.4f} | "
            f"{t['wilcoxon_p']:.3f} | {t['paired_t_p']:.3f} |"
            for t in tests
            if (t["better"], t["worse"]) in adjacent
        ]
    return lines


def write_ranking(folder, ds, s):
    """One small flat file per variant, so that `dvc metrics show metrics/rank` prints the ranking as a table
    a terminal holds: a row per variant in rank order (its path names dataset, rank and variant), five
    columns."""
    (folder / ds).mkdir()
    digits = len(str(len(s)))  # 01-... from 10 variants on: the rows sort in rank order
    for v, r in s.iterrows():
        write_json(
            folder / ds / f"{r['rank']:0{digits}d}-{v}.json",
            {
                "error": r.test_error_mean,
                "error_lower": r.test_error_ci_low,
                "error_upper": r.test_error_ci_high,
                "rank": r["rank"],
                "seeds": r.n,
            },
        )  # test error and its LEVEL interval; DVC sorts the columns by name


def markdown(ds, s, tests, neighbours, bn_cost, c, config, agree):
    last = c.sort_values("epoch").groupby("variant").tail(1).groupby("variant").act_mean.mean()
    lines = [
        f"## {ds}",
        "",
        f"Configuration: {config}.",
        "",
        f"| rank | variant | test error (mean ± std) | {LEVEL:.0%} CI | n | test loss | s/epoch "
        "| mean activation, last epoch | diverged |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for v, r in s.iterrows():
        spread = f" ± {r.test_error_std:.4f}" if r.n > 1 else ""
        lines.append(
            f"| {r['rank']} | {v} | {r.test_error_mean:.4f}{spread} | {r.test_error_ci_low:.4f}–"
            f"{r.test_error_ci_high:.4f} | {r.n} | {r.test_loss_mean:.3f} | {r.seconds_per_epoch:.1f} | "
            f"{last.get(v, float('nan')):+.3f} | {r.diverged} |"
        )
    lines += ["", "Ranking: " + " > ".join(s.index)] + agreement_lines(ds, agree) + [""]
    lines += neighbour_lines(s, tests, neighbours)
    if bn_cost:
        lines += [
            "",
            "| activation | s/epoch without BN | with BN | ratio | test error change with BN |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {a} | {b['seconds_per_epoch_without']:.1f} | {b['seconds_per_epoch_with']:.1f} | "
            f"{b['ratio']:.2f} | {b['test_error_change']:+.4f} |"
            for a, b in bn_cost.items()
        ]
    lines += ["", TIMING]
    figures = Path("..") / FIGURES  # relative to reports/, so the links work wherever the repository is
    lines += [
        "",
        f"![curves]({figures}/{ds}_curves.png)",
        f"![test error]({figures}/{ds}_test_error.png)",
        f"![bias shift]({figures}/{ds}_bias_shift.png)",
        "",
    ]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "project",
        nargs="?",
        default=".",
        help="the folder whose params.yaml, metrics/grid, "
        "results/grid, models/grid/*.json and dvclive/grid the report reads and under which it writes "
        "(default: here)",
    )
    project = ap.parse_args().project
    if not Path(project, "params.yaml").is_file():
        raise UserError(
            f"{project}: no params.yaml there; give the project's root or a published run's folder "
            f"(e.g. docs/results/cifar10-cpu)"
        )
    os.chdir(project)
    params = load()
    grid = params["grid"]
    df, curves, correct = collect(grid)
    summary, md = {}, ["# ALL-CNN-C: activation × batch normalisation", ""]
    with (
        atomic_path(FIGURES, directory=True) as fig,
        atomic_path(CURVES, directory=True) as cur,
        atomic_path(RANKING, directory=True) as rank,
    ):
        for ds in grid["dataset"]:
            d, c = df[df.dataset == ds], curves[curves.dataset == ds]
            s, ranking, tests, neighbours, bn_cost = summarise(d, correct)
            config, agree = configuration(params, d), agreement(ds, s)
            # dicts, not lists: `dvc metrics show` drops lists (the ranking is each variant's "rank")
            summary[ds] = {
                "configuration": config,
                "variants": s.drop(columns=["activation", "batch_norm"]).to_dict(orient="index"),
                "neighbours": {f"{t['better']} vs {t['worse']}": t for t in neighbours},
                "paired_tests": {f"{t['better']} vs {t['worse']}": t for t in tests},
                "bn_cost": bn_cost,
                "write_up": agree,
            }
            c.drop(columns=["dataset", "activation", "batch_norm"]).to_csv(
                cur / f"{ds}.tsv", sep="\t", index=False
            )
            save(plot_curves(c, int(d.classes.iloc[0]), config), fig / f"{ds}_curves.png")
            save(plot_error_and_speed(s, config), fig / f"{ds}_test_error.png")
            save(plot_bias_shift(c, config), fig / f"{ds}_bias_shift.png")
            md += markdown(ds, s, tests, neighbours, bn_cost, c, config, agree)
            write_ranking(rank, ds, s)
            tau = agree.get("ranking", {}).get("kendall_tau")
            print(
                f"report: {ds}: "
                + " > ".join(ranking)
                + ("" if tau is None else f" (Kendall's tau against the write-up's order: {tau:+.2f})")
            )
    with atomic_path(REPORT) as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")
    write_json("metrics/summary.json", summary)


if __name__ == "__main__":
    cli(main)
