"""report: rank the grid's variants per dataset, with error bars, paired tests, BN's cost and bias shift.

Reads only the entries in the current params.yaml grid (old files of removed entries are ignored).
Outputs: metrics/summary.json; reports/report.md, a table a person reads; reports/<dataset>_*.png;
plots/curves/<dataset>.tsv, the curves of every variant in one file for `dvc plots`.
"""
import itertools
import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from scipy import stats

from stages.outputs import atomic_path, write_json
from stages.params import cli, load
from stages.train import paths

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPORTS, CURVES = Path("reports"), Path("plots/curves")


def label(activation, batch_norm):
    return f"{activation}+bn" if batch_norm else activation


def read_curves(live_dir):
    """dvclive's per-metric TSVs (plots/metrics/{train,eval}/<name>.tsv) as one frame, one row per epoch."""
    frames = []
    for f in sorted(Path(live_dir, "plots/metrics").rglob("*.tsv")):
        split, name = f.parent.name, f.stem
        col = f"val_{name}" if split == "eval" else name
        frames.append(pd.read_csv(f, sep="\t").set_index("step")[[name]].rename(columns={name: col}))
    df = pd.concat(frames, axis=1).reset_index().rename(columns={"step": "epoch"})
    df["epoch"] += 1  # dvclive counts steps from 0; epochs are counted from 1
    return df


def collect(grid):
    """One row per trained model of the current grid, and one curves frame."""
    rows, curves = [], []
    for ds, act, bn, seed in itertools.product(*(grid[k] for k in ("dataset", "activation", "batch_norm", "seed"))):
        p = paths(ds, act, bn, seed)
        m = json.loads(p["metrics"].read_text())
        rows.append({"dataset": ds, "variant": label(act, bn), "activation": act, "batch_norm": bn, "seed": seed, **m})
        c = read_curves(p["live"])
        acts = [k for k in c if k.startswith("act") and k.endswith("_mean")]
        c["act_mean"] = c[acts[:-1]].mean(axis=1)  # hidden layers only: the class layer's output is a score
        curves.append(c.assign(dataset=ds, variant=label(act, bn), seed=seed))
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


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
        out.append({"better": a, "worse": b, "n": int(len(d)), "mean_error_difference": float(d.mean()),
                    "wilcoxon_p": float(w), "paired_t_p": float(t)})
    return out


def summarise(df):
    g = df.groupby("variant")
    s = pd.DataFrame({
        "n": g.size(), "test_error_mean": g.test_error.mean(), "test_error_std": g.test_error.std(ddof=1),
        "test_loss_mean": g.test_loss.mean(), "seconds_per_epoch": g.seconds_per_epoch.mean(),
        "train_seconds": g.train_seconds.mean(), "diverged": g.diverged.sum().astype(int),
        "activation": g.activation.first(), "batch_norm": g.batch_norm.first()})  # std: NaN (null) for one seed
    s = s.sort_values("test_error_mean")
    s.insert(0, "rank", range(1, len(s) + 1))
    ranking = list(s.index)
    bn_cost = {}
    for act, pair in s.groupby("activation"):
        if set(pair.batch_norm) == {False, True}:
            off, on = (pair[pair.batch_norm == v].iloc[0] for v in (False, True))
            bn_cost[act] = {"seconds_per_epoch_without": off.seconds_per_epoch, "seconds_per_epoch_with":
                            on.seconds_per_epoch, "ratio": on.seconds_per_epoch / off.seconds_per_epoch,
                            "test_error_change": on.test_error_mean - off.test_error_mean}
    return s, ranking, paired_tests(df, ranking), bn_cost


def plot_curves(c, path):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    mean = c.groupby(["variant", "epoch"]).mean(numeric_only=True).reset_index()
    for (variant, v), color in zip(mean.groupby("variant"), plt.cm.tab10.colors * 3):
        for ax, metric in zip(axes, ("loss", "accuracy")):
            ax.plot(v.epoch, v[metric], color=color, ls="--", lw=1)
            if f"val_{metric}" in v:
                ax.plot(v.epoch, v[f"val_{metric}"], color=color, label=variant)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric}: validation (solid), training (dashed)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_error_and_speed(s, path):
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    a1.bar(s.index, s.test_error_mean, yerr=s.test_error_std.fillna(0), capsize=4, color="tab:blue")
    a1.set(ylabel="test error", title=f"test error, mean ± std over seeds (n = {s.n.min()}..{s.n.max()})")
    a1.tick_params(axis="x", rotation=45)
    a2.scatter(s.seconds_per_epoch, 1 - s.test_error_mean)
    for v, r in s.iterrows():
        a2.annotate(v, (r.seconds_per_epoch, 1 - r.test_error_mean), fontsize=8)
    a2.set(xlabel="seconds per epoch", ylabel="test accuracy", title="accuracy against training cost")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bias_shift(c, path):
    """Clevert et al.: ELU keeps mean activations near zero. Measured, not assumed."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    mean = c.groupby(["variant", "epoch"]).mean(numeric_only=True).reset_index()
    layers = sorted((k for k in c if k.startswith("act") and k.endswith("_mean") and k != "act_mean"),
                    key=lambda k: int(k[3:-5]))
    for (variant, v), color in zip(mean.groupby("variant"), plt.cm.tab10.colors * 3):
        a1.plot(v.epoch, v.act_mean, color=color, label=variant)
        last = v.iloc[-1]
        a2.plot(range(1, len(layers) + 1), [last[k] for k in layers], marker="o", color=color, label=variant)
    a1.axhline(0, color="grey", lw=0.8)
    a2.axhline(0, color="grey", lw=0.8)
    a1.set(xlabel="epoch", ylabel="mean activation (hidden layers)", title="bias shift during training")
    a2.set(xlabel="activation layer", ylabel="mean activation", title="per layer, last epoch (layer 9: class scores)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(ds, s, tests, bn_cost, c):
    last = c.sort_values("epoch").groupby("variant").tail(1).groupby("variant").act_mean.mean()
    lines = [f"## {ds}", "", "| rank | variant | test error (mean ± std) | n | test loss | s/epoch | mean activation,"
             " last epoch | diverged |", "|---:|---|---|---:|---:|---:|---:|---:|"]
    for v, r in s.iterrows():
        spread = f" ± {r.test_error_std:.4f}" if r.n > 1 else ""
        lines.append(f"| {r['rank']} | {v} | {r.test_error_mean:.4f}{spread} | {r.n} | "
                     f"{r.test_loss_mean:.3f} | {r.seconds_per_epoch:.1f} | {last.get(v, float('nan')):+.3f} | "
                     f"{r.diverged} |")
    lines += ["", "Ranking: " + " > ".join(s.index), ""]
    adjacent = {(a, b) for a, b in zip(s.index, s.index[1:])}
    if tests:
        lines += ["Paired tests between neighbours in the ranking (same seeds):", "",
                  "| better | worse | n | error difference | Wilcoxon p | paired t p |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {t['better']} | {t['worse']} | {t['n']} | {t['mean_error_difference']:+.4f} | "
                  f"{t['wilcoxon_p']:.3f} | {t['paired_t_p']:.3f} |" for t in tests if (t["better"], t["worse"]) in adjacent]
    else:
        lines += ["One seed per variant: no error bars and no paired tests (add seeds to grid.seed)."]
    if bn_cost:
        lines += ["", "| activation | s/epoch without BN | with BN | ratio | test error change with BN |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {a} | {b['seconds_per_epoch_without']:.1f} | {b['seconds_per_epoch_with']:.1f} | "
                  f"{b['ratio']:.2f} | {b['test_error_change']:+.4f} |" for a, b in bn_cost.items()]
    lines += ["", f"![curves]({ds}_curves.png)", f"![test error]({ds}_test_error.png)",
              f"![bias shift]({ds}_bias_shift.png)", ""]
    return lines


def main():
    grid = load()["grid"]
    df, curves = collect(grid)
    summary, md = {}, ["# ALL-CNN-C: activation × batch normalisation", ""]
    with atomic_path(REPORTS, directory=True) as rep, atomic_path(CURVES, directory=True) as cur:
        for ds in grid["dataset"]:
            d, c = df[df.dataset == ds], curves[curves.dataset == ds]
            s, ranking, tests, bn_cost = summarise(d)
            # dicts, not lists: `dvc metrics show` drops lists (the ranking is each variant's "rank")
            summary[ds] = {"variants": s.drop(columns=["activation", "batch_norm"]).to_dict(orient="index"),
                           "paired_tests": {f"{t['better']} vs {t['worse']}": t for t in tests}, "bn_cost": bn_cost}
            c.drop(columns="dataset").to_csv(cur / f"{ds}.tsv", sep="\t", index=False)
            plot_curves(c, rep / f"{ds}_curves.png")
            plot_error_and_speed(s, rep / f"{ds}_test_error.png")
            plot_bias_shift(c, rep / f"{ds}_bias_shift.png")
            md += markdown(ds, s, tests, bn_cost, c)
            print(f"report: {ds}: " + " > ".join(ranking))
        (rep / "report.md").write_text("\n".join(md))
    write_json("metrics/summary.json", summary)


if __name__ == "__main__":
    cli(main)
