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
pytestmark = pytest.mark.skipif(not CHROMIUM and os.environ.get("CI") != "true",
                                reason="needs Chromium (apt-get install chromium); CI installs it and runs this")
# what the page shows once its scripts ran: charts vega-embed drew (it marks its divs .vega-embed) and images
PROBE = """JSON.stringify((() => {
  const images = [...document.images];
  return {ready: document.readyState,
          drawn: [...document.querySelectorAll('.vega-embed')].filter(d => d.querySelector('svg, canvas')).length,
          images: images.length,
          loaded: images.filter(i => i.complete && i.naturalWidth > 0).length};
})())"""


def write_plot_data(repo, shift):
    """Curves of two variants (plots/curves), the experiment's dvclive TSVs and one report figure (plots/figures)."""
    epochs = np.arange(1, 4)
    curves = pd.concat([pd.DataFrame({"epoch": epochs, "variant": v, "seed": 0, "accuracy": 0.1 * epochs + k + shift,
                                      "val_accuracy": 0.1 * epochs + k, "loss": 2 - 0.1 * epochs, "val_loss": 2.1 - k})
                        for k, v in ((0.0, "relu"), (0.05, "elu"))])
    (repo / "plots/curves").mkdir(parents=True, exist_ok=True)
    curves.to_csv(repo / "plots/curves/cifar10.tsv", sep="\t", index=False)
    for split in ("train", "eval"):
        for name in ("accuracy", "loss"):
            f = repo / f"dvclive/experiment/plots/metrics/{split}/{name}.tsv"
            f.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"step": epochs - 1, name: 0.1 * epochs + shift}).to_csv(f, sep="\t", index=False)
    (repo / "plots/figures").mkdir(parents=True, exist_ok=True)
    plt.imsave(repo / "plots/figures/cifar10_curves.png", np.full((20, 30), shift))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, cifar10_archive):
    """A project whose HEAD and workspace hold different plot data, as after `dvc exp run`."""
    repo = make_project(tmp_path_factory.mktemp("plots") / "repo", cifar10_archive)
    write_plot_data(repo, 0.0)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "plot data", cwd=repo)
    write_plot_data(repo, 0.2)
    return repo


class Cdp:
    """The Chrome DevTools Protocol over one websocket; events that arrive while waiting for replies are kept."""

    def __init__(self, ws):
        self.ws, self.n, self.events = ws, 0, []

    async def call(self, method, session=None, **params):
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params,
                                 **({"sessionId": session} if session else {})})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg.get("result", {})
            self.events.append(msg)


async def _load(ws_url, page):
    import aiohttp  # dvc's own HTTP client: its websocket speaks to Chromium
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        cdp = Cdp(ws)
        target = (await cdp.call("Target.createTarget", url="about:blank"))["targetId"]
        sid = (await cdp.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        for domain in ("Network", "Runtime", "Page"):
            await cdp.call(f"{domain}.enable", sid)
        await cdp.call("Page.navigate", sid, url=page.as_uri())
        charts = page.read_text().count("vegaEmbed(")  # DVC writes one call per chart
        for _ in range(240):  # until every chart is drawn, or a request or a script failed (then it never will)
            state = json.loads((await cdp.call("Runtime.evaluate", sid, expression=PROBE,
                                               returnByValue=True))["result"]["value"])
            failed = [e["params"] for e in cdp.events if e.get("method") in
                      ("Network.loadingFailed", "Runtime.exceptionThrown")]
            if failed or (state["ready"] == "complete" and state["drawn"] == charts
                          and state["loaded"] == state["images"]):
                break
            await asyncio.sleep(0.25)
        requests = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
        return {**state, "charts": charts, "failed": failed, "requests": requests}


def load_offline(page, tmp_path):
    """Opens page in headless Chromium that cannot resolve any host name; what it drew, requested and failed."""
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
                             f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0",
                             "about:blank"], stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if m := re.search(r"DevTools listening on (ws://\S+)", line):
                return asyncio.run(_load(m.group(1), page))
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
