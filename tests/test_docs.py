"""The README and docs/ stay walkable: links reach files and headings, the commands shown exist,
every page is reachable from the README, and the architecture picture is what its script draws."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`\n]+`")
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def split_fences(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The lines outside fenced code blocks, and each block as (language, lines)."""
    prose, blocks, current = [], [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and current is None:
            current = (m.group(2).lower(), [])
        elif m and current is not None:
            blocks.append(current)
            current = None
        elif current is not None:
            current[1].append(line)
        else:
            prose.append(line)
    assert current is None, "a code block is never closed"
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation other than '-' and '_' dropped,
    spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for line in split_fences(page.read_text())[0]:
        m = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    """Link targets in the page's prose (code blocks and inline code left out)."""
    prose = "\n".join(split_fences(page.read_text())[0])
    return LINK.findall(INLINE_CODE.sub("", prose))


def relative_targets(page: Path) -> list[tuple[str, Path, str]]:
    """(link as written, file it points to, anchor or '') for every relative link of ``page``."""
    out = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        out.append((target, (page.parent / path).resolve() if path else page, anchor))
    return out


def test_slug_follows_githubs_rule():
    assert slug("Compositional evaluation (hard negatives)") == "compositional-evaluation-hard-negatives"
    assert slug("The web page: tokenflow serve") == "the-web-page-tokenflow-serve"
    assert slug("ablate: the same comparison for any config") == "ablate-the-same-comparison-for-any-config"
    assert slug("`mpa` and `dive`") == "mpa-and-dive"


def test_relative_links_reach_files_and_headings():
    broken, checked = [], 0
    for page in pages():
        for written, path, anchor in relative_targets(page):
            checked += 1
            where = f"{page.relative_to(ROOT)}: ({written})"
            if not path.exists():
                broken.append(f"{where}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{where}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert checked > 50, f"only {checked} relative links found: is the link pattern still right?"
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    seen, todo = {README.resolve()}, [README.resolve()]
    while todo:
        page = todo.pop()
        for _, path, _ in relative_targets(page):
            if path.suffix == ".md" and path.is_file() and path not in seen:
                seen.add(path)
                todo.append(path)
    missing = [p.relative_to(ROOT) for p in DOCS.glob("*.md") if p.resolve() not in seen]
    assert not missing, f"pages no link path from README.md reaches: {missing}"


def test_readme_is_under_250_lines():
    n = len(README.read_text().splitlines())
    assert n < 250, f"README.md has {n} lines; move detail to docs/"


# --- commands -------------------------------------------------------------------------------


def parser_options() -> tuple[set[str], dict[str, set[str]]]:
    """The top-level options of ``tokenflow`` and each subcommand's option strings."""
    from tokenflow.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    top = {o for a in parser._actions for o in a.option_strings}
    return top, {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


def shell_lines(lines: list[str]) -> list[str]:
    """Logical command lines: backslash continuations joined, and the indented continuation lines
    of a usage synopsis (starting with '[', '(', '|' or '-') joined to the command above."""
    out: list[str] = []
    joining = False
    for line in lines:
        stripped = line.strip()
        if out and (joining or (line[:1].isspace() and stripped[:1] in "[(|-" and "tokenflow" in out[-1])):
            out[-1] += " " + stripped
        else:
            out.append(stripped)
        joining = out[-1].endswith("\\")
        if joining:
            out[-1] = out[-1][:-1]
    return out


def invocations(line: str) -> list[list[str]]:
    """The words after ``tokenflow`` (or ``-m tokenflow.cli``) in each command of a shell line."""
    if line.startswith(("from ", "import ")):
        return []
    line = re.sub(r"\"[^\"]*\"|'[^']*'", "STR", line)  # quoted text is never an option
    line = re.sub(r"(^|\s)#.*$", "", line)  # comments
    found = []
    for command in re.split(r"&&|\|\||;", line):
        # The command itself (a path before it allowed), or the module that torchrun or python runs.
        m = re.match(r"\s*(?:\S*/)?tokenflow\s+(.*)$", command) or re.search(r"-m\s+tokenflow\.cli\s+(.*)$", command)
        if m:
            found.append(m.group(1).split())
    return found


def commands_shown() -> list[tuple[str, str]]:
    """(page, command line) for every tokenflow command in a shell code block or inline code."""
    shown = []
    for page in pages():
        prose, blocks = split_fences(page.read_text())
        for lang, lines in blocks:
            if lang in SHELL_LANGS:
                shown += [(page.name, line) for line in shell_lines(lines) if "tokenflow" in line]
        for span in INLINE_CODE.findall("\n".join(prose)):
            if span.startswith("`tokenflow "):
                shown.append((page.name, span.strip("`")))
    return shown


def command_problems(line: str, top: set[str], subs: dict[str, set[str]]) -> list[str]:
    """What is wrong with the tokenflow commands of one line: an unknown subcommand, or an
    option its subcommand does not have. Placeholders (``COMMAND``, ``...``) are skipped."""
    problems = []
    for words in invocations(line):
        while words and words[0] in top:
            words = words[1:]
        if not words or not re.fullmatch(r"[a-z][a-z-]*", words[0]):
            continue
        name, rest = words[0], words[1:]
        if name not in subs:
            problems.append(f"no subcommand {name!r}")
            continue
        for word in rest:
            m = re.match(r"^[\[(|]*(--?[a-zA-Z][\w-]*)", word)
            if m and m.group(1) not in subs[name]:
                problems.append(f"tokenflow {name} has no option {m.group(1)}")
    return problems


def test_command_checker_catches_bad_commands():
    top, subs = parser_options()
    assert command_problems("tokenflow evaluate --dataset coco [--no-such-flag]", top, subs) == [
        "tokenflow evaluate has no option --no-such-flag"]
    assert command_problems("tokenflow no-such-command --x", top, subs) == ["no subcommand 'no-such-command'"]
    assert command_problems('tokenflow --debug COMMAND ... && tokenflow search --text "a --b"', top, subs) == []


def test_commands_in_the_docs_are_real():
    top, subs = parser_options()
    shown = commands_shown()
    assert len(shown) > 40, f"only {len(shown)} tokenflow commands found in the docs: is the parser still right?"
    problems = [f"{page}: {problem}: {line}" for page, line in shown for problem in command_problems(line, top, subs)]
    assert not problems, "\n".join(problems)


# --- Python snippets and names ---------------------------------------------------------------


def resolve(dotted: str) -> object:
    """Import the longest importable prefix of ``dotted`` and get the rest as attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_python_snippets_parse_and_import_real_names():
    missing, n = [], 0
    for page in pages():
        for lang, lines in split_fences(page.read_text())[1]:
            if lang != "python":
                continue
            tree = ast.parse("\n".join(lines), filename=page.name)  # a SyntaxError fails the test
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tokenflow":
                    for alias in node.names:
                        n += 1
                        try:
                            resolve(f"{node.module}.{alias.name}")
                        except (ImportError, AttributeError) as e:
                            missing.append(f"{page.name}: from {node.module} import {alias.name} ({e})")
    assert n > 10 and not missing, "\n".join(missing)


def test_dotted_names_in_the_docs_exist():
    names = set()
    for page in pages():
        prose = "\n".join(split_fences(page.read_text())[0])
        for span in INLINE_CODE.findall(prose):
            names |= set(re.findall(r"(?<![\w./])tokenflow(?:\.[A-Za-z_]\w*)+", span))
    names = {n for n in names if n.rsplit(".", 1)[-1] not in {"json", "lock"}}  # file names
    assert len(names) > 10
    missing = []
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError) as e:
            missing.append(f"{name}: {e}")
    assert not missing, "\n".join(missing)


# --- the picture -----------------------------------------------------------------------------


def test_architecture_svg_is_what_its_script_draws():
    spec = importlib.util.spec_from_file_location("draw_architecture", DOCS / "draw_architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    svg = module.render()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert (DOCS / "architecture.svg").read_text() == svg, "run: python docs/draw_architecture.py"
    assert "architecture.svg" in (DOCS / "architecture.md").read_text()


def test_methods_hyperparameter_table_is_the_generated_table():
    from tokenflow.align import hparam_table

    text = (DOCS / "methods.md").read_text()
    begin, end = "<!-- hparams:begin -->", "<!-- hparams:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    body = text.split(begin)[1].split(end)[0].strip()
    assert body == hparam_table().strip(), (
        "docs/methods.md's table differs from the plans' declared specs: paste tokenflow.align.hparam_table() "
        "between the hparams markers")
