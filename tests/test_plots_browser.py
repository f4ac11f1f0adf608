"""`dvc plots show` and `dvc plots diff` pages draw every chart in a real headless Chromium with the network
blocked: the page template (.dvc/plots/offline.html, set as plots.html_template in .dvc/config) carries
vega, vega-lite and vega-embed itself. The plot data are small files written here, in the layout the report
stage and dvclive write, so no model is trained."""

import asyncio
import json
import os
import re
import shutil
import subprocess

import matplotlib
import numpy as np
import pandas as pd
import pytest

from tests.conftest import dvc, git, make_project

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREEN = (1400, 900)  # a laptop's browser window, in CSS pixels
EPOCHS, VARIANTS = 150, (("relu", False), ("elu", False), ("elu", True))  # of the plot data
pytestmark = [
    pytest.mark.e2e,  # trains, runs DVC and a browser: the whole module is outside the fast tier
    pytest.mark.skipif(
        not CHROMIUM and os.environ.get("CI") != "true",
        reason="needs Chromium (apt-get install chromium); CI installs it and runs this",
    ),
]
# what the page shows once its scripts ran: charts vega-embed drew (it marks its divs .vega-embed) and images
PROBE = """JSON.stringify((() => {
  const images = [...document.images];
  return {ready: document.readyState,
          drawn: [...document.querySelectorAll('.vega-embed')]
                   .filter(d => d.querySelector('svg, canvas')).length,
          images: images.length,
          loaded: images.filter(i => i.complete && i.naturalWidth > 0).length};
})())"""

# where each plot's block of the page sits: its id, its top edge, the heading DVC gives an image plot (its
# path) and the right edges of its images
LAYOUT = """JSON.stringify([...document.body.children].filter(d => d.id).map(d => ({
  id: d.id, top: d.getBoundingClientRect().top + window.scrollY,
  heading: d.querySelector(':scope > p') ? d.querySelector(':scope > p').textContent : null,
  right: [...d.querySelectorAll('img')].map(i => i.getBoundingClientRect().right)})))"""
# each chart drawn again as SVG (DVC's page draws on canvas) from the first n epochs of its data: the x-axes'
# labels, and per legend its title and entries (label, the sample's dash pattern, colour, width)
CHARTS = """(async () => {
  const out = {}, q = (el, sel) => [...el.querySelectorAll(sel)];
  for (const [id, spec] of Object.entries(SPECS)) for (const n of EPOCHS) {
    const s = structuredClone(spec), div = document.createElement('div');
    s.data.values = s.data.values.filter(v => (v.epoch !== undefined ? +v.epoch : +v.step + 1) <= n);
    document.body.appendChild(div);
    await vegaEmbed(div, s, {renderer: 'svg', actions: false});
    const axes = q(div, 'g.role-axis').filter(a => (a.getAttribute('aria-label') || '').startsWith('X-axis'));
    out[`${id}@${n}`] = {
      x: axes.map(a => q(a, 'g.role-axis-label text').map(t => t.textContent)),
      legends: q(div, 'g.role-legend').map(l => {
        const labels = q(l, 'g.role-legend-label text').map(t => t.textContent);
        return {title: q(l, 'g.role-legend-title text').map(t => t.textContent).join(' '),
                entries: q(l, 'g.role-legend-symbol path').map((p, i) => ({
                  label: labels[i], dash: p.getAttribute('stroke-dasharray'), width: p.getBBox().width,
                  colour: p.getAttribute('stroke'), stroke: +p.getAttribute('stroke-width')}))};
      })};
    div.remove();
  }
  return JSON.stringify(out);
})()"""


def specs(page):
    """{plot id: its Vega-Lite spec} of a page DVC wrote: one `var spec = {...}; vegaEmbed('#id', spec)` per
    chart."""
    return {
        m[2]: json.loads(m[1])
        for m in re.finditer(r"var spec = (.*);\s*vegaEmbed\('#([^']+)'", page.read_text())
    }


def charts(page, epochs):
    return CHARTS.replace("SPECS", json.dumps(specs(page))).replace("EPOCHS", json.dumps(list(epochs)))


def write_plot_data(repo, shift):
    """Curves of two variants (plots/curves), the experiment's dvclive TSVs and one report figure
    (plots/grid)."""
    from stages.entry import variant as label
    from stages.figures import colour

    epochs = np.arange(1, EPOCHS + 1)
    curves = pd.concat(
        [
            pd.DataFrame(
                {
                    "epoch": epochs,
                    "variant": label(a, bn),
                    "seed": 0,
                    "accuracy": 0.05 * epochs + k + shift,
                    "val_accuracy": 0.05 * epochs + k,
                    "loss": 2 - 0.1 * epochs,
                    "val_loss": 2.1 - k,
                    "colour": colour(a, bn, ["relu", "elu"]),
                }
            )
            for k, (a, bn) in zip((0.0, 0.05, 0.1), VARIANTS)
        ]
    )
    (repo / "plots/curves").mkdir(parents=True, exist_ok=True)
    curves.to_csv(repo / "plots/curves/cifar10.tsv", sep="\t", index=False)
    for split in ("train", "eval"):
        for name in ("accuracy", "loss"):
            f = repo / f"dvclive/experiment/plots/metrics/{split}/{name}.tsv"
            f.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"step": epochs - 1, name: 0.1 * epochs + shift}).to_csv(f, sep="\t", index=False)
    (repo / "plots/grid").mkdir(parents=True, exist_ok=True)
    plt.imsave(repo / "plots/grid/cifar10_curves.png", np.full((20, 30), shift))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, cifar10_archive):
    """A project whose HEAD and workspace hold different plot data, as after `dvc exp run`."""
    repo = make_project(tmp_path_factory.mktemp("plots") / "repo", cifar10_archive)
    write_plot_data(repo, 0.0)
    git(
        "add", "-f", "plots", "dvclive", cwd=repo
    )  # by hand here: .gitignore lists them as the stages' outputs
    git("commit", "-qm", "plot data", cwd=repo)
    write_plot_data(repo, 0.2)
    return repo


class Cdp:
    """The Chrome DevTools Protocol over one websocket; events that arrive while waiting for replies are
    kept."""

    def __init__(self, ws):
        self.ws, self.n, self.events = ws, 0, []

    async def call(self, method, session=None, **params):
        self.n += 1
        await self.ws.send_json(
            {"id": self.n, "method": method, "params": params, **({"sessionId": session} if session else {})}
        )
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg.get("result", {})
            self.events.append(msg)


async def _load(ws_url, page, inspect):
    import aiohttp  # dvc's own HTTP client: its websocket speaks to Chromium

    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        cdp = Cdp(ws)
        target = (await cdp.call("Target.createTarget", url="about:blank"))["targetId"]
        sid = (await cdp.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        for domain in ("Network", "Runtime", "Page"):
            await cdp.call(f"{domain}.enable", sid)
        await cdp.call(
            "Emulation.setDeviceMetricsOverride",
            sid,
            width=SCREEN[0],
            height=SCREEN[1],
            deviceScaleFactor=1,
            mobile=False,
        )
        await cdp.call("Page.navigate", sid, url=page.as_uri())
        charts = page.read_text().count("vegaEmbed(")  # DVC writes one call per chart
        for _ in range(
            240
        ):  # until every chart is drawn, or a request or a script failed (then it never will)
            state = json.loads(
                (await cdp.call("Runtime.evaluate", sid, expression=PROBE, returnByValue=True))["result"][
                    "value"
                ]
            )
            failed = [
                e["params"]
                for e in cdp.events
                if e.get("method") in ("Network.loadingFailed", "Runtime.exceptionThrown")
            ]
            if failed or (
                state["ready"] == "complete"
                and state["drawn"] == charts
                and state["loaded"] == state["images"]
            ):
                break
            await asyncio.sleep(0.25)
        requests = [
            e["params"]["request"]["url"]
            for e in cdp.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        found = "{}"
        if inspect:
            found = (
                await cdp.call(
                    "Runtime.evaluate", sid, expression=inspect, awaitPromise=True, returnByValue=True
                )
            )["result"]["value"]
        return {**state, "charts": charts, "failed": failed, "requests": requests, "found": json.loads(found)}


def load_offline(page, tmp_path, inspect=None):
    """Opens page in headless Chromium that cannot resolve any host name; what it drew, requested and failed,
    and what the JavaScript expression inspect (a JSON string, or a promise of one) found there afterwards."""
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=http://127.0.0.1:9",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stderr:
            if m := re.search(r"DevTools listening on (ws://\S+)", line):
                return asyncio.run(_load(m.group(1), page, inspect))
        raise AssertionError("Chromium exited before opening its DevTools port")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def assert_drawn(result, charts, images):
    assert result["failed"] == []
    assert not [u for u in result["requests"] if not u.startswith(("file:", "data:"))]  # nothing off the disk
    assert (result["charts"], result["drawn"]) == (charts, charts)
    assert (result["images"], result["loaded"]) == (images, images)


def test_plots_show_draws_every_chart_offline(repo, tmp_path):
    dvc("plots", "show", "-o", str(tmp_path / "show"), cwd=repo)
    page = tmp_path / "show/index.html"
    assert "cdn.jsdelivr" not in page.read_text()
    # curves of the variants, the experiment's accuracy and loss; the report's figure
    assert_drawn(load_offline(page, tmp_path), charts=3, images=1)


def test_plots_diff_draws_both_revisions_offline(repo, tmp_path):
    dvc("plots", "diff", "HEAD", "-o", str(tmp_path / "diff"), cwd=repo)
    assert_drawn(load_offline(tmp_path / "diff/index.html", tmp_path), charts=3, images=2)  # HEAD, workspace


def test_dvc_default_page_is_blank_offline(repo, tmp_path):
    """The control that shows the check can fail: DVC's own page loads vega from a CDN."""
    from dvc_render.html import PAGE_HTML

    default = tmp_path / "default.html"
    default.write_text(PAGE_HTML)
    dvc("plots", "show", "--html-template", str(default), "-o", str(tmp_path / "show"), cwd=repo)
    result = load_offline(tmp_path / "show/index.html", tmp_path)
    assert result["failed"] and result["charts"] == 3 and result["drawn"] == 0
    assert any("cdn.jsdelivr.net" in u for u in result["requests"])


def test_charts_have_integer_epoch_ticks_line_samples_and_the_figures_colours(repo, tmp_path):
    """Were: an epoch axis reading 1 2 2 3 3 on 3 epochs; dash legends whose samples had no stroke
    (transparent); variant colours of Vega's own scheme, not the PNG figures'."""
    from stages.entry import variant as label
    from stages.figures import colour

    dvc("plots", "diff", "HEAD", "-o", str(tmp_path / "diff"), cwd=repo)
    page = tmp_path / "diff/index.html"
    found = load_offline(page, tmp_path, charts(page, (1, 2, 3, 7, EPOCHS)))["found"]
    assert len(found) == 3 * 5  # the grid's curves and the experiment's two charts, at each epoch count
    for key, chart in found.items():
        n = int(key.rsplit("@", 1)[1])
        assert chart["x"] and all(labels == chart["x"][0] for labels in chart["x"]), key
        ticks = [int(t) for t in chart["x"][0]]  # int(): a label such as 1.5 or 1e+2 fails here
        assert ticks == (list(range(1, n + 1)) if n <= 10 else sorted(set(ticks))), (key, ticks)
        assert 0 <= ticks[0] and len(ticks) <= 15, (key, ticks)  # 150 epochs: 0, 20, ..., 140 on a nice scale
        legends = {legend["title"]: legend["entries"] for legend in chart["legends"]}
        dashes = legends["revision" if key.startswith("plots_curves") else "images"]
        assert len(dashes) == 2 and dashes[0]["dash"] != dashes[1]["dash"], (key, dashes)
        for entry in dashes:  # a visible line, long enough for two periods of its dash pattern
            period = sum(float(x) for x in entry["dash"].split(","))
            assert entry["colour"] not in (None, "transparent") and entry["stroke"] >= 1.5, (key, entry)
            assert entry["width"] >= 2 * period, (key, entry)
        if key.startswith("plots_curves"):
            colours = {e["label"]: e["colour"] for e in legends["variant"]}
            assert colours == {label(a, bn): colour(a, bn, ["relu", "elu"]) for a, bn in VARIANTS}


@pytest.fixture(scope="module")
def experiments(tmp_path_factory, cifar10_archive):
    """The tiny grid as a committed baseline, then two experiments that differ only in `activation`."""
    repo = make_project(tmp_path_factory.mktemp("experiments") / "repo", cifar10_archive)
    dvc("repro", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "baseline", cwd=repo)
    for activation in ("elu", "prelu"):
        dvc("exp", "run", "-n", f"exp-{activation}", "-S", f"activation={activation}", cwd=repo)
    return repo


def test_plots_diff_of_two_experiments_leads_with_the_experiment_model(experiments, tmp_path):
    """Was: the grid's curves first and its three figures, the same in both experiments, filling the page (the
    second column off-screen at 1400 px); the two charts that differ came between them."""
    dvc("plots", "diff", "exp-elu", "exp-prelu", "-o", str(tmp_path / "diff"), cwd=experiments)
    page = tmp_path / "diff/index.html"
    result = load_offline(page, tmp_path, LAYOUT)
    assert_drawn(result, charts=3, images=6)  # 3 report figures of each experiment
    charts = specs(page)
    blocks = result["found"]  # in the page's order
    order = [charts[b["id"]]["title"]["text"] if b["id"] in charts else b["heading"] for b in blocks]
    assert order[:2] == [
        "Accuracy of the experiment model per epoch",
        "Loss of the experiment model per epoch",
    ]
    assert max(b["top"] for b in blocks[:2]) < min(
        b["top"] for b in blocks[2:]
    )  # and above the grid's on screen
    assert order[2].startswith("The grid, not the experiment model: learning curves")
    assert sorted(order[3:]) == [
        f"plots/grid/cifar10_{name}.png" for name in ("bias_shift", "curves", "test_error")
    ]
    for block in blocks[:2]:  # what differs: the experiment model of each
        assert {v["rev"] for v in charts[block["id"]]["data"]["values"]} == {"exp-elu", "exp-prelu"}
    for name in ("curves", "test_error", "bias_shift"):  # the grid's figures: the same files in both
        a, b = (
            tmp_path / f"diff/static/{rev}_plots_grid_cifar10_{name}.png" for rev in ("exp-elu", "exp-prelu")
        )
        assert a.read_bytes() == b.read_bytes()
    assert all(0 < right <= SCREEN[0] for b in blocks for right in b["right"])  # side by side in the window
