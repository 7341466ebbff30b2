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
