"""The README and docs/ say only what is true: marked code blocks run, named commands exist, links resolve.

A fenced block preceded by `<!-- runnable -->` runs as a bash script (set -e) in a fresh temporary folder, with this
checkout's package first on the path; `<!-- runnable: slow -->` blocks run in order in one slow test, in a folder
where `python -m dpo_sweeps experiment=demo` (what `make demo` runs) has run first. Nothing is written into the
repository's own outputs/.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Modules the docs name that are being built in parallel work; each is skipped (with the reason) while it does not
# exist, checked like every other once it does. Remove a name from here when its module lands.
PENDING_MODULES: set[str] = set()
README_MAX_LINES = 250

MARKER = re.compile(r"^<!--\s*runnable(?::\s*(?P<kind>[\w-]+))?\s*-->\s*$")
FENCE = re.compile(r"^```")


def marked_blocks(page: Path) -> list[tuple[str, int, str]]:
    """(kind, line number, code) of every fenced block right after a runnable marker ('' = fast)."""
    lines = page.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if m:
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j >= len(lines) or not FENCE.match(lines[j]):
                raise AssertionError(f"{page.name}:{i + 1}: a runnable marker must be followed by a fenced block")
            k = j + 1
            while k < len(lines) and not FENCE.match(lines[k]):
                k += 1
            out.append((m.group("kind") or "", j + 1, "\n".join(lines[j + 1 : k])))
            i = k
        i += 1
    return out


def code_text(page: Path) -> str:
    """Everything a reader would copy: fenced blocks and `inline code` spans."""
    text = page.read_text()
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M))
    return "\n".join(fenced + inline)


def run_block(code: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        # This checkout's package and the venv's python/make first, as after `source .venv/bin/activate`.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scratch(tmp_path: Path) -> Path:
    """A fresh folder that looks like the repository's root to `make` (the Makefile only)."""
    (tmp_path / "Makefile").symlink_to(REPO / "Makefile")
    return tmp_path


FAST = [
    pytest.param(code, id=f"{page.relative_to(REPO)}:{line}")
    for page in PAGES
    for kind, line, code in marked_blocks(page)
    if kind == ""
]
SLOW = [(page, line, code) for page in PAGES for kind, line, code in marked_blocks(page) if kind == "slow"]


def test_some_blocks_are_marked():
    assert len(FAST) >= 3 and SLOW, "the README's quick commands are marked runnable"
    kinds = {kind for page in PAGES for kind, _, _ in marked_blocks(page)}
    assert kinds <= {"", "slow"}, f"unknown runnable kinds: {kinds - {'', 'slow'}}"


@pytest.mark.parametrize("code", FAST)
def test_runnable_block(code, tmp_path):
    cwd = scratch(tmp_path)
    proc = run_block(code, cwd, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), "a documented command printed nothing"


@pytest.mark.slow
def test_slow_blocks_after_the_demo(tmp_path):
    cwd = scratch(tmp_path)
    demo = run_block("python -m dpo_sweeps experiment=demo", cwd, timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (cwd / "outputs" / "sweeps" / "demo" / "summary.md").is_file()
    for page, line, code in SLOW:
        proc = run_block(code, cwd, timeout=600)
        where = f"{page.relative_to(REPO)}:{line}"
        assert proc.returncode == 0, f"{where}: exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))


def named(pattern: str) -> list[tuple[str, str]]:
    return sorted({(m, page.name) for page in PAGES for m in re.findall(pattern, code_text(page))})


@pytest.mark.parametrize(("target", "page"), named(r"(?<![\w-])make ([a-z][\w-]*)"))
def test_make_targets_exist(target, page):
    assert target in makefile_targets(), f"{page} names `make {target}`, which the Makefile does not have"


def module_runs(name: str) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return False
    if spec is None:
        return False
    # A package runs with -m only through its __main__.
    return spec.submodule_search_locations is None or importlib.util.find_spec(f"{name}.__main__") is not None


@pytest.mark.parametrize(("module", "page"), named(r"python -m (dpo_sweeps(?:\.\w+)*)"))
def test_python_modules_exist(module, page):
    if not module_runs(module) and module in PENDING_MODULES:
        pytest.skip(f"{module} is being built (PENDING_MODULES in {Path(__file__).name})")
    assert module_runs(module), f"{page} names `python -m {module}`, which is not a runnable module"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    missing = [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_readme_is_a_short_read():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for command in ("make demo", "make test", "make install"):
        assert command in readme
