"""The report's figures (plots/grid/<dataset>_*.png): learning curves, test error against time, bias shift.

Every figure states the configuration behind it at its foot, in type that stays legible when `dvc plots diff`
puts two revisions side by side in a browser window (each image then shown at about half its width). A variant
has one colour everywhere (colour(): PNGs and, through plots/curves' colour column, the interactive charts).
"""

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from stages.entry import variant  # noqa: E402
from stages.report_inputs import layer_means  # noqa: E402
from stages.statistics import LEVEL  # noqa: E402

DPI = 110  # a 12-inch figure is 1,320 px wide
# `dvc plots diff` shows an image at most half the window wide (.dvc/plots/offline.html: 50vw - 40 px), so at
# 1,400 px a 12-inch figure is shown at 0.5x: its type is set larger than a page's, the footer the largest
FOOTER_PT_PER_INCH = 1.0  # footer type in points per inch of figure width: 12 pt on 12 inches, ~9 px shown
matplotlib.rcParams.update({"font.size": 11})  # axis labels and ticks: ~8 px shown at 0.5x (default 10)
FOOTER_CHARS = 600  # a footer longer than this is cut (the report's inputs hold no long text; this bounds it)
# hue pairs (dark, light): tab20's ten, then tab20b's and tab20c's five each (their 1st and 3rd shades)
PAIRS = [plt.cm.tab20.colors[i : i + 2] for i in range(0, 20, 2)] + [
    (cm.colors[i], cm.colors[i + 2]) for cm in (plt.cm.tab20b, plt.cm.tab20c) for i in range(0, 20, 4)
]


def colour(activation, batch_norm, activations):
    """A variant's colour: a hue per activation in the grid's order (activations: grid.activation; any name
    gets one, the 21st repeats the 1st), dark with BN and light without."""
    order = list(dict.fromkeys(activations))
    hue = order.index(activation) if activation in order else len(order)
    return matplotlib.colors.to_hex(PAIRS[hue % len(PAIRS)][not batch_norm])


def style(activation, batch_norm, activations):
    """Colour = variant (hue = activation), line style = BN, the same in every figure."""
    return {
        "color": colour(activation, batch_norm, activations),
        "ls": "-" if batch_norm else "--",
        "label": variant(activation, batch_norm),
    }


def legend_outside(ax, title="solid: with BN, dashed: without", **kw):
    """The legend to the right of ax, outside it, where it covers no data (save()'s tight layout makes
    room)."""
    ax.legend(
        fontsize=9,
        title=title,
        title_fontsize=9,
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
        borderaxespad=0,
        **kw,
    )


def footer_lines(config, width_in):
    """The configuration as lines that fit a width_in-inch figure's footer (~0.55 em a character), cut to
    FOOTER_CHARS: wrapped here in linear time (matplotlib's own wrapping grew faster than linearly)."""
    text = config if len(config) <= FOOTER_CHARS else config[: FOOTER_CHARS - 1] + "…"
    return textwrap.wrap(text, width=int(72 / (0.55 * FOOTER_PT_PER_INCH))) or [""]


def figure(config, nrows, ncols, figsize, **kw):
    """A figure that states the configuration behind it at its foot (fig.footer_height: its share of the
    figure's height, which save() keeps free)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, **kw)
    lines, size = footer_lines(config, figsize[0]), FOOTER_PT_PER_INCH * figsize[0]
    fig.text(0.5, 0.005, "\n".join(lines), ha="center", va="bottom", fontsize=size, color="dimgrey")
    fig.footer_height = (len(lines) * size * 1.25 + 6) / 72 / figsize[1]
    return fig, axes


def save(fig, path):
    fig.tight_layout(rect=(0, fig.footer_height, 1, 0.97))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def seed_note(curves):
    """What a figure's curve is: one model, or the mean over the seeds of a variant."""
    n = sorted(set(curves.groupby("variant").seed.nunique()))
    if n == [1]:
        return "each curve: one model (one seed per variant)"
    return f"each curve: the mean over the {'/'.join(map(str, n))} seeds of a variant"


def seed_means(curves):
    """The curves averaged over seeds: a row per activation, BN and epoch."""
    return curves.groupby(["activation", "batch_norm", "epoch"]).mean(numeric_only=True).reset_index()


def plot_curves(curves, classes, activations, config):
    """Loss and accuracy per epoch on the validation and the training images, a line per variant."""
    fig, axes = figure(config, 2, 2, (12, 8.4), sharex=True)
    for (act, bn), v in seed_means(curves).groupby(["activation", "batch_norm"]):
        for row, metric in enumerate(("loss", "accuracy")):
            for col, key in enumerate((f"val_{metric}", metric)):
                if key in v:
                    axes[row, col].plot(v.epoch, v[key], marker="o", ms=3, **style(act, bn, activations))
    for col, images in enumerate(("validation", "training")):
        axes[1, col].axhline(1 / classes, color="grey", ls=":", lw=1, label=f"chance (1/{classes})")
        for row, metric in enumerate(("loss (cross-entropy)", "accuracy")):
            axes[row, col].set(ylabel=metric, title=f"{metric}, {images} images")
            axes[row, col].grid(alpha=0.3)
        axes[1, col].set_xlabel("epoch")
        axes[1, col].xaxis.set_major_locator(MaxNLocator(integer=True))
    legend_outside(axes[1, 1])
    fig.suptitle(seed_note(curves), fontsize=11)
    return fig


def interval_note(variants):
    ns = sorted(variants.n.unique())
    if ns == [1]:
        return f"binomial (Wilson) over {variants.test_images.iloc[0]:,} test images"
    if 1 not in ns:
        return f"Student's t over seeds (n = {'/'.join(map(str, ns))} seeds per variant)"
    return "binomial for 1 seed, Student's t over seeds otherwise"


def plot_error_and_speed(variants, activations, config):
    """Test error with its confidence interval, by rank (left) and against the time an epoch takes (right;
    variants named in a legend, so that close points leave no labels on top of each other)."""
    fig, (a1, a2) = figure(config, 1, 2, (12, 5))
    s = variants
    yerr = [s.test_error_mean - s.test_error_ci_low, s.test_error_ci_high - s.test_error_mean]
    looks = [style(r.activation, r.batch_norm, activations) for _, r in s.iterrows()]
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
            label=v,
            ls="none",
        )
    a2.set(
        xlabel="seconds per epoch (depends on the machine's load)",
        ylabel="test error",
        title="test error against training time",
    )
    legend_outside(a2, title="filled: with BN, open: without")
    fig.suptitle(f"bars: {LEVEL:.0%} confidence interval, {interval_note(s)}", fontsize=11)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    return fig


def plot_bias_shift(curves, activations, config):
    """Clevert et al.: ELU keeps mean activations near zero. Measured, not assumed: the hidden layers' mean
    during training and per layer at the last epoch, and the class scores' layer on its own axes (its mean
    runs to several units and would flatten the hidden layers' tenths)."""
    fig, (a1, a2, a3) = figure(config, 1, 3, (14, 4.8))
    layers = layer_means(curves)
    hidden, scores = layers[:-1], layers[-1:]
    for (act, bn), v in seed_means(curves).groupby(["activation", "batch_norm"]):
        look = style(act, bn, activations)
        a1.plot(v.epoch, v.act_mean, marker="o", ms=3, **look)
        a2.plot(range(1, len(hidden) + 1), [v.iloc[-1][k] for k in hidden], marker="o", **look)
        for k in scores:
            a3.plot(v.epoch, v[k], marker="o", ms=3, **look)
    a1.set(xlabel="epoch", ylabel="mean activation (hidden layers)", title="bias shift during training")
    a2.set(xlabel="hidden activation layer", ylabel="mean activation", title="per hidden layer, last epoch")
    a3.set(
        xlabel="epoch",
        ylabel="mean activation",
        title=f"layer {len(layers)}: the class scores" if scores else "no activation curves",
    )
    for ax in (a1, a2, a3):
        ax.axhline(0, color="grey", lw=0.8)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend_outside(a3)
    fig.suptitle(seed_note(curves), fontsize=11)
    return fig
