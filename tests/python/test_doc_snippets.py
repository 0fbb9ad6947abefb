"""Every ```python block of README.md and docs/*.md runs as written.

The rule:

- A fenced block whose info string is exactly ``python`` is a snippet and
  must run. Anything not meant to run (shell sessions, output, signatures,
  fragments) is fenced as ``text``, ``sh``, ``sql`` or left untagged.
- The snippets of one file run **in order, in one fresh interpreter** (the
  worktree's venv Python, ``sys.executable``), in a fresh empty temporary
  working directory, each block executed in the same ``__main__`` namespace.
  A later block may therefore use names and files an earlier block of the
  same page made, as a reader going down the page would; pages never depend
  on each other.
- The environment is the caller's, except that ``KVAULT_SHARED`` is removed
  (snippets see the documented default ``shared="auto"``), ``KVAULT_WRITER``
  points at this checkout's writer when one is built (so
  ``shared="spawn"`` snippets start a real writer, as
  tests/python/conftest.py finds it) and ``KVAULT_LINGER_MS`` is short. A
  writer a snippet spawned is waited for until it stopped by itself.
- A snippet fails the test when it raises (the runner reports the file, the
  block's line number and the traceback) or the page takes longer than
  ``TIMEOUT`` seconds.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from kohakuvault import _kvault
from kohakuvault._writer import writer_binary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 300
# How long a spawned writer may take to stop after its last client left.
_WRITER_STOP_S = 20.0

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`]*)$")

# Runs the blocks of one page: argv[1] is a JSON list of [line, source].
_RUNNER = r'''
import json, sys, traceback
page, blocks = sys.argv[1], json.load(open(sys.argv[2]))
ns = {"__name__": "__main__"}
for line, source in blocks:
    try:
        exec(compile(source, f"{page}:{line}", "exec"), ns)
    except BaseException:
        sys.stdout.flush()
        print(f"SNIPPET FAILED: {page}, block at line {line}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
'''


def extract_python_blocks(text: str) -> list[tuple[int, str]]:
    """``[(line, source)]`` of the ```python fenced blocks of a Markdown
    text; ``line`` is the 1-based line of the opening fence. Indented fences
    (inside list items) are dedented. An unclosed fence raises ValueError."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group("fence"), m.group("info").strip(), i
        body = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if close and close.group("fence").startswith(fence) and not close.group("info").strip():
                break
            body.append(lines[i])
            i += 1
        else:
            raise ValueError(f"unclosed code fence opened at line {start + 1}")
        if info == "python":
            blocks.append((start + 1, textwrap.dedent("\n".join(body)) + "\n"))
        i += 1
    return blocks


def doc_pages() -> list[str]:
    """README.md and docs/*.md, relative to the checkout."""
    pages = ["README.md"] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return [os.path.relpath(os.path.join(ROOT, p), ROOT) for p in pages]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("KVAULT_SHARED", None)
    writer = writer_binary(ROOT)
    if writer:
        env["KVAULT_WRITER"] = writer
    env["KVAULT_LINGER_MS"] = "200"
    return env


def _wait_spawned_writers(workdir: str) -> None:
    """Wait until every writer a snippet started in ``workdir`` (they leave
    ``<db>-kvault.spawn``) stopped serving its file."""
    deadline = time.monotonic() + _WRITER_STOP_S
    for lock in glob.glob(os.path.join(workdir, "**", "*-kvault.spawn"), recursive=True):
        db = lock[: -len("-kvault.spawn")]
        while _kvault._attach_served(db, "kv"):
            assert time.monotonic() < deadline, f"writer spawned for {db} did not stop"
            time.sleep(0.1)


def run_page(page: str, blocks: list[tuple[int, str]], workdir: str) -> subprocess.CompletedProcess:
    """Run ``blocks`` of ``page`` in order in one interpreter inside ``workdir``."""
    spec = os.path.join(workdir, ".snippets.json")
    with open(spec, "w") as f:
        json.dump(blocks, f)
    try:
        return subprocess.run(
            [sys.executable, "-c", _RUNNER, page, spec],
            cwd=workdir, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
        )
    finally:
        _wait_spawned_writers(workdir)


def _pages_with_snippets():
    out = []
    for page in doc_pages():
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            blocks = extract_python_blocks(f.read())
        if blocks:
            out.append(pytest.param(page, blocks, id=page))
    return out


@pytest.mark.parametrize("page,blocks", _pages_with_snippets())
def test_page_snippets_run(page, blocks, tmp_path):
    """Every ```python block of the page runs without raising."""
    r = run_page(page, blocks, str(tmp_path))
    assert r.returncode == 0, f"{page}:\n{r.stdout}\n{r.stderr}"


def test_readme_and_api_reference_have_snippets():
    """The pages every newcomer reads first do carry runnable examples (so
    an extraction that silently finds nothing fails here)."""
    for page in ("README.md", os.path.join("docs", "api.md")):
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            assert extract_python_blocks(f.read()), f"no ```python block found in {page}"


def fence_infos(text: str) -> list[tuple[int, str]]:
    """``[(line, info string)]`` of every opening code fence of a Markdown text."""
    out, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if not m:
            continue
        if fence is None:
            fence = m.group("fence")
            out.append((n, m.group("info").strip()))
        elif m.group("fence").startswith(fence) and not m.group("info").strip():
            fence = None
    return out


@pytest.mark.parametrize("page", doc_pages())
def test_python_is_tagged_python(page):
    """Python code is fenced ``python`` (and then runs) or with a tag that
    says it does not run (``text``, ``pycon`` for sessions): variants such as
    ``py`` or ``python3`` would silently escape this test."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        infos = fence_infos(f.read())
    bad = [(n, info) for n, info in infos
           if info.lower() in ("py", "python3", "py3") or (info.lower() == "python" and info != "python")]
    assert not bad, f"{page}: use ```python (runs) or ```text (does not): {bad}"


def test_extraction_rules():
    """Only ``python`` fences count; indented fences are dedented; longer
    fences may hold shorter ones; an unclosed fence is an error."""
    text = (
        "# t\n```python\nx = 1\n```\n"
        "```sh\nrm -rf /\n```\n"
        "```\nnot code\n```\n"
        "- item\n  ```python\n  y = x + 1\n  ```\n"
        "````python\ns = '''\n```\n'''\n````\n"
    )
    blocks = extract_python_blocks(text)
    assert [b[0] for b in blocks] == [2, 12, 15]
    assert blocks[0][1] == "x = 1\n"
    assert blocks[1][1] == "y = x + 1\n"
    assert "```" in blocks[2][1]
    with pytest.raises(ValueError, match="unclosed"):
        extract_python_blocks("```python\nx = 1\n")


def test_a_raising_snippet_fails(tmp_path):
    """The runner reports a snippet that raises (and runs a page's blocks in
    one namespace, in order)."""
    ok = run_page("ok.md", [(1, "x = 41\n"), (5, "assert x + 1 == 42\n")], str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    bad = run_page("bad.md", [(1, "x = 1\n"), (7, "raise RuntimeError('boom')\n")], str(tmp_path))
    assert bad.returncode != 0
    assert "bad.md, block at line 7" in bad.stderr and "boom" in bad.stderr
