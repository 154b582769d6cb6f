"""Every `sh` and `python` block of README.md and docs/**/*.md runs as written, and every link resolves.

Blocks run page by page, in order, in one temporary directory holding a copy of configs/ (and of the page's
server config). A page declares what its blocks need in an HTML comment on its own line (docs/README.md
lists them): `<!-- docs-test: slow models=cnn,minilm server=CONFIG s3=BUCKET -->`. Before a block,
`<!-- not run: reason -->` skips it and `<!-- expect: text -->` checks its output contains the text.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
RUNNABLE = ("sh", "python")
LANGUAGES = (*RUNNABLE, "console", "text", "yaml", "json")  # a block of any other language is a mistake
DEMO_ADDRESS = "127.0.0.1:8000"  # what the pages' blocks call; a page's server runs on a free port instead
BLOCK_TIMEOUT_S = 600

_FENCE = re.compile(r"^```(\S*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*(docs-test|not run|expect):\s*(.*?)\s*-->\s*$")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@dataclass
class Block:
    language: str
    code: str
    line: int
    not_run: str | None = None
    expect: list[str] = field(default_factory=list)


@dataclass
class Page:
    path: Path
    blocks: list[Block]
    needs: dict[str, str]  # slow, models, server, s3 (from `docs-test:`)

    @property
    def runnable(self) -> list[Block]:
        return [b for b in self.blocks if b.language in RUNNABLE and b.not_run is None]


def parse(path: Path) -> Page:
    blocks: list[Block] = []
    needs: dict[str, str] = {}
    pending: dict[str, list[str]] = {}
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        directive = _DIRECTIVE.match(lines[i])
        fence = _FENCE.match(lines[i])
        if directive and directive[1] == "docs-test":
            for item in directive[2].split():
                key, _, value = item.partition("=")
                needs[key] = value
        elif directive:
            pending.setdefault(directive[1], []).append(directive[2])
        elif fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```")
            not_run = pending.get("not run", [None])[0]
            blocks.append(
                Block(fence[1], "\n".join(lines[i + 1 : end]) + "\n", i + 1, not_run, pending.get("expect", []))
            )
            pending = {}
            i = end
        elif lines[i].strip():
            pending = {}  # a directive applies to the block right after it
        i += 1
    return Page(path, blocks, needs)


def _page_params() -> list:
    params = []
    for path in PAGES:
        page = parse(path)
        if page.runnable:
            marks = [pytest.mark.slow] if "slow" in page.needs else []
            params.append(pytest.param(page, marks=marks, id=str(path.relative_to(ROOT))))
    return params


def _link_models(repository: Path, names: str, workdir: Path) -> None:
    """The session's demo models at workdir/model_repository, hard-linked (a page's builds add versions beside
    them, never write into them)."""
    for name in names.split(","):
        try:
            shutil.copytree(repository / name, workdir / "model_repository" / name, copy_function=os.link)
        except OSError:  # another file system
            shutil.copytree(repository / name, workdir / "model_repository" / name, dirs_exist_ok=True)


@contextlib.contextmanager
def _server(config: str, workdir: Path, monkeypatch):
    """The page's Serve config on free ports (a session's server may hold 8000), served from workdir; yields
    the address to put in the blocks in place of DEMO_ADDRESS."""
    from runtime.serve.launcher import LocalServe
    from tests.fixtures.ports import free_port, haproxy_ports

    doc = yaml.safe_load((ROOT / config).read_text())
    port = free_port()
    doc["http_options"] = {**doc.get("http_options", {}), "host": "127.0.0.1", "port": port}
    path = workdir / config
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.chdir(workdir)  # `repository: ./model_repository` resolves where `serve run` starts
    with LocalServe(path, log_path=workdir / "serve.log", env=haproxy_ports()):
        yield f"127.0.0.1:{port}"


@contextlib.contextmanager
def _store(bucket: str | None):
    """moto's S3 with `bucket`, and the environment that points clients at it; nothing without a bucket."""
    if bucket is None:
        yield {}
        return
    from benchmarks.s3_server import s3_server

    with s3_server() as s3:
        s3.bucket(bucket)
        yield s3.env


def _run(block: Block, workdir: Path, env: dict[str, str], address: str | None) -> str:
    code = block.code.replace(DEMO_ADDRESS, address) if address else block.code
    command = ["bash", "-e", "-o", "pipefail", "-c", code] if block.language == "sh" else [sys.executable, "-c", code]
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"block at line {block.line} exited {proc.returncode}:\n{code}\n{output[-3000:]}"
    for text in block.expect:
        assert text in output, f"block at line {block.line}: {text!r} not in its output:\n{output[-3000:]}"
    return output


@pytest.mark.parametrize("page", _page_params())
def test_page_examples_run(page: Page, tmp_path, request, monkeypatch):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRTSERVE_CACHE": str(tmp_path / "cache"),
    }
    env.pop("RAY_ADDRESS", None)  # jobs start a Ray of their own, as on a user's machine
    if "models" in page.needs:
        _link_models(request.getfixturevalue("built_repository"), page.needs["models"], tmp_path)
    with contextlib.ExitStack() as stack:
        env.update(stack.enter_context(_store(page.needs.get("s3"))))
        address = None
        if "server" in page.needs:
            address = stack.enter_context(_server(page.needs["server"], tmp_path, monkeypatch))
        for block in page.runnable:
            _run(block, tmp_path, env, address)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", path.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path: Path):
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)  # links inside code are not links
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_blocks_name_a_known_language(path: Path):
    """A block fenced without a language, or with one the test does not know, would silently not run."""
    unknown = [f"line {b.line}: {b.language or '(none)'}" for b in parse(path).blocks if b.language not in LANGUAGES]
    assert not unknown, f"{path.relative_to(ROOT)}: fence a block as one of {', '.join(LANGUAGES)}: {unknown}"
