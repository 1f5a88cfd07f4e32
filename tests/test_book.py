"""The batch and the book end to end on the smoke profile: every chapter executes through the runner, the book
renders with warnings as errors, every chapter page exists with its figures and without error output, and a
secret in the environment appears in nothing the run writes.

The run uses the checkout's ``runs/smoke`` store, as ``make book`` does, so the notebooks executed later by
``pytest --nbmake`` find every stage already computed.
"""

import json
import re
from pathlib import Path

import pytest

from simplemix import runner

SECRET = "sk-simplemix-test-secret-0123456789"
SECRET_VARS = ("OPENAI_API_KEY", "HF_TOKEN", "WANDB_API_KEY")


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """Run every notebook with a fake secret in the environment, then build the book; returns the run dir."""
    mp = pytest.MonkeyPatch()
    for name in SECRET_VARS:
        mp.setenv(name, SECRET)
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        (runner.REPO / "runs" / "smoke" / "results.json").unlink(missing_ok=True)  # only this run's chapters count
        # force: up-to-date chapters would otherwise be skipped, and the secret must be in their environment
        assert runner.run_notebooks("smoke", runs_dir=runner.REPO / "runs", force=True, jobs=2) == 0  # as make book
        run_dir = runner.REPO / "runs" / "smoke"
        assert runner.build_book(run_dir) == 0
    finally:
        mp.undo()
    return run_dir


def _pages(run_dir: Path) -> dict[str, Path]:
    html = run_dir / "_build" / "html"
    pages = {p.stem: html / "notebooks" / f"{p.stem}.html" for p in runner.notebooks()}
    return pages | {"intro": html / "book" / "intro.html", "reproduce": html / "book" / "reproduce.html"}


def _chapters() -> list[str]:
    """The chapters that reproduce paper results (the 9x pages summarise the run and have no figures)."""
    return [p.stem for p in runner.notebooks() if not p.name.startswith("9")]


def test_every_chapter_page_exists_with_its_figures(smoke_book):
    pages = _pages(smoke_book)
    assert all(p.exists() for p in pages.values()), [k for k, p in pages.items() if not p.exists()]
    for name in _chapters():
        text = pages[name].read_text(encoding="utf-8")
        images = re.findall(r'<img[^>]+src="([^"]+)"', text)
        assert images, f"{name}: no figure on the page"
        for src in images:
            if not src.startswith("data:"):
                assert (pages[name].parent / src).resolve().exists(), f"{name}: missing image {src}"
        assert "Traceback (most recent call last)" not in text, f"{name}: a cell failed on the page"
        assert "output_error" not in text and "cell_output error" not in text, f"{name}: error output shown"


def test_every_chapter_records_its_headline_numbers(smoke_book):
    results = json.loads((smoke_book / "results.json").read_text())
    chapters = set(_chapters()) - {"00_miniature_world"}
    assert chapters <= set(results), sorted(chapters - set(results))


def test_a_secret_in_the_environment_is_written_nowhere(smoke_book):
    written = [p for p in smoke_book.rglob("*") if p.is_file() and p.suffix in
               {".ipynb", ".json", ".html", ".txt", ".log", ".md", ".yaml", ".jsonl", ".csv"}]
    assert len(written) > 20
    leaks = [str(p) for p in written if SECRET in p.read_text(encoding="utf-8", errors="ignore")]
    assert not leaks, leaks


# ----------------------------------------------------------------------------------------- headless Chromium
HARNESS = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="page" src="{url}" width="1200" height="900"></iframe>
<script>
// a warning or log line, a traceback, a tqdm bar ("40%|####  | 4/10 [00:01<00:02, 3.1it/s]")
const NOISE = /WARNING|Warning:|Traceback \(most recent call last\)|\d+%\|.*\||\d+(\.\d+)?(it\/s|s\/it)\]/;
const frame = document.getElementById("page");
frame.addEventListener("load", () => {{
  const doc = frame.contentDocument;
  const images = Array.from(doc.images);
  const settled = images.map(i => i.complete ? Promise.resolve() : new Promise(r => {{ i.onload = r; i.onerror = r; }}));
  Promise.all(settled).then(() => {{
    const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
    const errors = doc.querySelectorAll(".output.traceback, .output.error, .output_error").length;
    // what a reader sees, and every output area's text, collapsed or not
    const outputs = Array.from(doc.querySelectorAll(".cell_output")).map(o => o.textContent);
    const lines = [doc.body.innerText, ...outputs].join("\\n").split("\\n");
    const noise = [...new Set(lines.filter(l => NOISE.test(l)).map(l => l.trim().slice(0, 160)))];
    // code a reader sees above the page's first figure (collapsed inputs have no height)
    const first = doc.querySelector("article img, main img, img");
    const top = first ? first.getBoundingClientRect().top : Infinity;
    const code_above = Array.from(doc.querySelectorAll(".cell_input"))
      .filter(c => {{ const r = c.getBoundingClientRect();
                      return !c.closest("details:not([open])") && r.height > 0 && r.top < top; }}).length;
    document.getElementById("result").textContent =
      JSON.stringify({{images: images.length, broken, errors, noise, code_above_first_figure: code_above}});
  }});
}});
</script></body></html>"""


def chromium_check(page: Path, tmp_path: Path) -> dict:
    """Open ``page`` in headless Chromium and report its images, those that failed to load and error outputs."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("the rendered-book test needs Debian's chromium: apt-get install chromium (.ci/run does)")
    harness = tmp_path / f"harness-{page.stem}.html"
    harness.write_text(HARNESS.format(url=page.resolve().as_uri()))
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=20000", "--dump-dom", harness.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="result">([^<]*)</pre>', out.stdout)
    assert found and found.group(1) != "pending", f"Chromium did not render {page}: {out.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def screenshot(page: Path, png: Path, height: int = 2400) -> Path:
    """A full-width headless-Chromium screenshot of the top of ``page``."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size=1280,{height}", "--virtual-time-budget=10000", f"--screenshot={png}",
                    page.resolve().as_uri()], capture_output=True, text=True, timeout=120, check=True)
    assert png.stat().st_size > 10_000, f"empty screenshot of {page}"
    return png


def test_rendered_pages_are_clean_and_load_every_image_in_headless_chromium(smoke_book, tmp_path):
    pages = _pages(smoke_book)
    for name in (p.stem for p in runner.notebooks()):
        report = chromium_check(pages[name], tmp_path)
        assert report["broken"] == [] and report["errors"] == 0, (name, report)
        assert report["noise"] == [], (name, report["noise"])  # no warning, log line, traceback or tqdm bar
        assert report["images"] > 0 or name.startswith("9"), (name, report)
    # the check can fail: a page with a missing image, an error output, a warning and a bar is reported as such
    bad = pages["01_category_analysis"].parent / "zz_broken_copy.html"
    text = pages["01_category_analysis"].read_text(encoding="utf-8")
    text = re.sub(r'(<img[^>]+src=")[^"]+', r"\1missing-figure.png", text, count=1)
    injected = ('<div class="cell_output"><pre>[2026-12-03 12:41:27,101] [WARNING] [real_accelerator.py:213] '
                'Setting accelerator to CPU.\nComputing reference log probs:  44%|####4     | 7/16 '
                '[00:00&lt;00:00, 11.95it/s]</pre></div><div class="output traceback">Traceback</div>')
    bad.write_text(text.replace("</article>", injected + "</article>", 1))
    try:
        report = chromium_check(bad, tmp_path)
    finally:
        bad.unlink()
    assert report["broken"] == ["missing-figure.png"] and report["errors"] == 1
    assert len(report["noise"]) == 2 and "Setting accelerator" in report["noise"][0], report["noise"]


def test_chapters_02_and_03_show_no_code_above_their_first_figure(smoke_book, tmp_path):
    pages = _pages(smoke_book)
    for name in ("02_on_vs_off_policy", "03_simplemix_and_baselines"):
        png = screenshot(pages[name], smoke_book / "screenshots" / f"{name}.png")  # kept in the run folder
        report = chromium_check(pages[name], tmp_path)
        assert report["images"] > 0 and report["code_above_first_figure"] == 0, (name, report, png)
    # the negative control: the same page with its inputs expanded shows code above the figure
    page = pages["02_on_vs_off_policy"]
    shown = page.parent / "zz_inputs_shown.html"
    shown.write_text(re.sub(r'(<details class="[^"]*above-input")', r"\1 open", page.read_text(encoding="utf-8")))
    try:
        assert chromium_check(shown, tmp_path)["code_above_first_figure"] > 0
    finally:
        shown.unlink()
