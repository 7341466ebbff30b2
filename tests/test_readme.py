"""The README's Python example runs as written and does what it says."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_ten_line_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Ten lines of Python\s+```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out.split()
    assert out[0] == "True"  # the corrupted pattern was recalled exactly


def test_doctests_of_the_package():
    import doctest
    import importlib
    import pkgutil

    import assocmem

    failed = attempted = 0
    for info in pkgutil.walk_packages(assocmem.__path__, "assocmem."):
        mod = importlib.import_module(info.name)
        res = doctest.testmod(mod)
        failed += res.failed
        attempted += res.attempted
    assert attempted >= 4 and failed == 0


def test_docs_have_no_unfilled_placeholders():
    """Docs are written with measured numbers: no leftover marker lines such as ``BENCH_RESULTS``
    that a script or a person was meant to replace, and every figure they show exists."""
    root = pathlib.Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        markers = re.findall(r"^\s*([A-Z][A-Z0-9]*_[A-Z0-9_]*(?:RESULTS|TODO|TBD))\s*$", text, flags=re.M)
        assert not markers, f"{page.name}: unfilled placeholder line(s) {markers}"
        assert not re.search(r"\bTODO\b|\bTBD\b|XXX", text), f"{page.name}: TODO/TBD/XXX left in the text"
        for img in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
            if not img.startswith("http"):
                assert (page.parent / img).is_file(), f"{page.name}: figure {img} does not exist"
