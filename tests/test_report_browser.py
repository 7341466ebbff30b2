"""The demo's report page in a real browser: headless Chromium loads index.html, every image must
load and the results table must be visible. Skipped (with a message) when Chromium is not installed;
`make test` installs the Debian packages chromium and chromium-driver when it can."""
import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); })
                   .map(function (i) { return i.getAttribute('data-file') || i.src.slice(0, 60); });
  var t = document.getElementById('results');
  var r = t ? t.getBoundingClientRect() : null;
  var st = t ? window.getComputedStyle(t) : null;
  var cell = t ? t.querySelector('tbody td') : null;
  var out = document.createElement('pre');
  out.id = 'assocmem-check';
  out.textContent = JSON.stringify({
    images: imgs.length, broken: broken, rows: t ? t.tBodies[0].rows.length : 0,
    table_visible: !!(t && r.width > 100 && r.height > 100 && st.display !== 'none' && st.visibility !== 'hidden'
                      && parseFloat(st.opacity) > 0 && cell && cell.getBoundingClientRect().height > 5),
    first_cell: cell ? cell.textContent : null, title: document.title
  });
  document.body.appendChild(out);
});
</script>"""


def _browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver; `make test` does it when it can)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from assocmem.demos import mnist

    _browser()  # skip before the run when there is no browser
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("browser") / "report"
        cfg = mnist.MnistDemoConfig(n_memories=150, cues={m: 3 for m in mnist.MODELS})
        records, index = mnist.run(out, cfg=cfg, progress=False)
    finally:
        torch.set_num_threads(before)
    return index, records


def _run(args, tmp_path, timeout=120):
    profile = tmp_path / "profile"
    cmd = [_browser(), *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_every_image_loads_and_the_table_is_visible(report, tmp_path):
    index, records = report
    page = tmp_path / "check.html"
    page.write_text(index.read_text().replace("</body>", CHECK + "</body>"))
    r = _run(["--virtual-time-budget=10000", "--window-size=1280,2000", "--dump-dom", page.as_uri()], tmp_path)
    m = re.search(r'<pre id="assocmem-check">(.*?)</pre>', r.stdout, re.S)
    assert m, f"no check output from Chromium (exit {r.returncode}): {r.stderr[-500:]}"
    got = json.loads(html.unescape(m.group(1)))
    assert got["images"] == 8 and got["broken"] == []
    assert got["table_visible"] and got["rows"] == len(records) == 18
    assert got["first_cell"] == "classical" and got["title"].startswith("assocmem")


def test_screenshot_shows_the_report(report, tmp_path):
    from PIL import Image

    index, _ = report
    shot = tmp_path / "shot.png"
    r = _run([f"--screenshot={shot}", "--window-size=1280,1600", index.as_uri()], tmp_path)
    assert shot.is_file(), f"no screenshot (exit {r.returncode}): {r.stderr[-500:]}"
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert px.shape[:2] == (1600, 1280)
    # not blank: dark text and table rules on a white page, and colour from the bar chart
    assert (px.mean(-1) < 80).mean() > 0.005 and (px.mean(-1) > 240).mean() > 0.5
    assert (np.ptp(px, axis=-1) > 100).mean() > 0.001
