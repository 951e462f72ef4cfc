"""The package's layering: what imports what, and what the core install needs.

Every ``tokenflow`` module belongs to a layer and may import only from its own layer or below,
at module level or inside a function (a lazy import must not hide a cycle). The alignment core
(``tokenflow``, ``tokenflow.align``, ``tokenflow.losses``) must work with the core dependencies
alone, and every feature beyond it must name the extra to install.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tokenflow

SRC = Path(tokenflow.__file__).parent

# Lowest first. A module's layer is that of its longest listed prefix.
LAYERS = [
    ["tokenflow._extras", "tokenflow._version", "tokenflow.errors", "tokenflow.utils", "tokenflow.tokens",
     "tokenflow.distributed"],
    ["tokenflow.losses"],
    ["tokenflow.align", "tokenflow"],
    ["tokenflow.data", "tokenflow.models"],
    ["tokenflow.eval"],
    ["tokenflow.train", "tokenflow.viz"],
    ["tokenflow.bench", "tokenflow.demo", "tokenflow.index", "tokenflow.serve"],
    ["tokenflow.cli", "tokenflow.__main__"],
]

# Installed by the extras only (pyproject.toml); the core is torch, numpy, scipy and POT.
NOT_CORE = ["transformers", "tokenizers", "av", "matplotlib", "pydantic", "yaml", "PIL", "tqdm", "safetensors",
            "faiss"]


def layer_of(module: str) -> int:
    best, layer = "", None
    for k, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, layer = name, k
    assert layer is not None, f"{module} is in no layer: add it to LAYERS"
    return layer


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """tokenflow modules that ``path`` imports anywhere in its body (submodules resolved)."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tokenflow"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tokenflow":
                continue
            for a in node.names:  # `from . import x` imports the submodule x when there is one
                sub = f"{target}.{a.name}"
                is_sub = (SRC.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    SRC.parent / Path(*sub.split(".")) / "__init__.py").is_file()
                found.add(sub if is_sub else target)
    found.discard(mod)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(SRC.rglob("*.py"))}


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
              for m, deps in graph().items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    g = graph()
    # A package's __init__ importing its own modules, which import siblings, is the normal
    # shape; a cycle is a path from a module back to itself through modules only.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d in g and state.get(d) is None:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in g:
        if state.get(m) is None:
            visit(m)


def test_the_graph_check_sees_lazy_and_relative_imports(tmp_path):
    # The checker itself: a function-level relative import must be found and resolved.
    pkg = SRC / "align"
    deps = imports_of(pkg / "registry.py")
    assert "tokenflow.align.base" in deps
    assert any(d == "tokenflow.tokens" for d in imports_of(pkg / "base.py"))
    assert layer_of("tokenflow.align.max_avg") == 2 and layer_of("tokenflow.tokens") == 0


def run_core_only(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where the extras' packages cannot be imported."""
    blocker = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {NOT_CORE!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: core-only test)", name=name)
                return None
        sys.meta_path.insert(0, Block())
    """)
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_the_core_works_without_any_extra():
    res = run_core_only("""
        import sys, torch
        import tokenflow, tokenflow.losses
        from tokenflow import Tokens, list_aligners
        from tokenflow.align import aligner_for
        g = torch.Generator().manual_seed(0)
        def tokens(n, l):
            return Tokens(torch.randn(n, l, 8, generator=g), torch.ones(n, l, dtype=torch.bool),
                          torch.randn(n, 8, generator=g))
        for name in list_aligners():
            s = aligner_for(name, dim=8).pairwise(tokens(3, 4), tokens(2, 5))  # dim: plans with learned heads
            assert s.v2t.shape == (3, 2), name
        loaded = sorted({m.split(".")[0] for m in sys.modules})
        print("LOADED", " ".join(loaded))
    """)
    assert res.returncode == 0, res.stderr
    assert "LOADED" in res.stdout


def test_max_avg_loads_no_transport_solver_nor_any_extra():
    res = run_core_only("""
        import sys
        import tokenflow
        tokenflow.get_aligner("max-avg")
        print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
    """)
    assert res.returncode == 0, res.stderr
    loaded = set(res.stdout.split())
    assert "tokenflow" in loaded
    assert not loaded & {"ot", "scipy", *NOT_CORE}, loaded & {"ot", "scipy", *NOT_CORE}


def test_features_beyond_the_core_name_their_extra(tmp_path):
    res = run_core_only(f"""
        from pathlib import Path
        from tokenflow._extras import MissingExtra

        def message(fn):
            try:
                fn()
            except MissingExtra as e:
                return str(e)
            raise AssertionError(f"{{fn}} did not raise MissingExtra")

        def train():
            import tokenflow.train  # noqa: F401

        def video():
            from tokenflow.data import read_video_frames
            read_video_frames(Path({str(tmp_path / 'x.mp4')!r}), 4)

        def image():
            from tokenflow.data import load_image
            load_image({str(tmp_path / 'x.png')!r})

        def clip():
            from tokenflow.models.hf_clip import HFCLIP
            folder = Path({str(tmp_path)!r})
            for name in ("config.json", "preprocessor_config.json", "tokenizer.json"):
                (folder / name).write_text("{{}}")
            HFCLIP.from_pretrained(folder)

        for fn, extra in ((train, "train"), (video, "video"), (image, "train"), (clip, "clip")):
            msg = message(fn)
            assert f"pip install 'tokenflow[{{extra}}]'" in msg, (fn.__name__, msg)
        print("OK")
    """)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout


def test_the_cli_starts_without_any_extra():
    res = run_core_only("""
        import sys
        from tokenflow.cli import main
        try:
            main(["--help"])
        except SystemExit as e:
            assert e.code == 0, e.code
        code = main(["demo", "--quick", "--out", "/nonexistent/x"])
        assert code == 2, code
    """)
    assert res.returncode == 0, res.stderr
    assert "usage: tokenflow" in res.stdout
    assert "pip install 'tokenflow[train]'" in res.stderr


def test_the_extras_match_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from tokenflow._extras import EXTRA_MODULES, EXTRAS

    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras) - {"all", "test"} == set(EXTRAS) == set(EXTRA_MODULES)
    dist = {"PIL": "pillow", "yaml": "pyyaml", "faiss": "faiss-cpu"}
    for extra, modules in EXTRA_MODULES.items():
        names = {req.split(">")[0].split("=")[0].split("[")[0].lower() for req in extras[extra]}
        for m in modules:
            assert dist.get(m, m) in names, f"[{extra}] lacks the distribution of {m}"
    core = {req.split(">")[0].lower() for req in project["dependencies"]}
    assert core == {"torch", "numpy", "scipy", "pot"}


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{module_name(path)}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


#: The most lines a module of the package may have (counted as ``wc -l`` counts them).
MAX_MODULE_LINES = 450


def test_no_module_is_over_the_line_limit():
    long = [f"{p.relative_to(SRC.parent)}: {n} lines" for p in sorted(SRC.rglob("*.py"))
            if (n := p.read_bytes().count(b"\n")) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them):\n" + "\n".join(long)
