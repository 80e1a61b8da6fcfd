"""mkdocs hooks (mkdocs.yml): links from docs/ pages to files elsewhere in the repository.

The pages are written to be read on disk and on a code host, so they link to ``../scripts/x.py`` or
``../results/curves/val_5w1s.png``. mkdocs only knows the files under ``docs/``; here every such target
that exists is added to the site (at its repository path) and the link is rewritten to it, so images
show and links work. A target that does not exist is a warning (``mkdocs build --strict`` fails), except
under ``results/``, which the result runs write: those are listed at INFO level and shown on the site as
text, "not generated yet", until their run writes them.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.repo_links")
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s#]+)((?:#[^)\s]*)?(?:\s+\"[^\"]*\")?\))")
GENERATED = ("results/",)  # written by the result runs; a link there may wait for its run


def _root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _outside_target(page_src: str, target: str, docs: Path, root: Path) -> str | None:
    """The repository path (posix) a page's relative link points to, when it leaves docs/; else None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
        return None
    full = posixpath.normpath(posixpath.join(posixpath.dirname(page_src), target))
    if not full.startswith("../"):
        return None  # inside docs/: mkdocs checks it
    path = (docs / full).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _links(markdown: str):
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        if not in_code:
            yield from LINK.finditer(line)


def on_files(files, config):
    """Add every existing repository file that a page links to (outside docs/) to the site, at its repository path."""
    docs, root = Path(config["docs_dir"]).resolve(), _root(config)
    added = set()
    for f in list(files):
        if not f.src_uri.endswith(".md"):
            continue
        text = Path(f.abs_src_path).read_text(encoding="utf-8")
        for m in _links(text):
            rel = _outside_target(f.src_uri, m.group(2), docs, root)
            if rel and rel not in added and (root / rel).is_file():
                files.append(File(rel, str(root), config["site_dir"], config["use_directory_urls"]))
                added.add(rel)
    return files


def on_page_markdown(markdown, page, config, files):
    """Rewrite links that leave docs/ to the copies added by :func:`on_files`; report targets that do not exist."""
    docs, root = Path(config["docs_dir"]).resolve(), _root(config)

    def rewrite(m: re.Match) -> str:
        rel = _outside_target(page.file.src_uri, m.group(2), docs, root)
        if rel is None:
            return m.group(0)
        if not (root / rel).exists():
            level = logging.INFO if rel.startswith(GENERATED) else logging.WARNING
            log.log(
                level,
                f"{page.file.src_uri} links to {rel}, which does not exist"
                + (" (not generated yet)" if level == logging.INFO else ""),
            )
            if level == logging.INFO:  # shown as text on the site until its run writes it
                return f"*({rel}: not generated yet)*"
            return m.group(0)
        if (root / rel).is_dir():
            return m.group(0)  # a folder: left as it is (a code host shows it)
        new = posixpath.relpath(rel, posixpath.dirname(page.file.src_uri) or ".")
        return m.group(1) + new + m.group(3)

    out, in_code = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        out.append(line if in_code else LINK.sub(rewrite, line))
    return "\n".join(out)
