"""The library's layout holds: imports point one way, nothing imports in a circle, each module says what it
is for, and the core stays small enough to list in one breath.

Rooms sit on top of the core (modules directly in tinylib/, which import only the core), in this order:
`interop` (other formats), `interp` (interpretability; may import interop), `finetune` (the instruction
stage), `experiments` (the runner, run status, results), `evals` (evaluation sets), `exercises` (the
notebooks' exercises), `widgets` (what only a notebook needs) and `demo` (`make demo`), each importing the
core and the rooms that ALLOWED names. Nothing imports `widgets` but `widgets`. A function-local import is
allowed only for a third-party dependency that is heavy or optional (transformers, TransformerLens,
matplotlib, ...), and it says why in a comment on its line or the line above. The checks are functions of a
folder, so the tests can show them failing on a planted mistake.

Modules have no line cap: a module holds one concern and its docstring says which (a core module's also says
what it leaves to others); a large module is fine where its one concern is large (the model, checkpoints).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("interop", "interp", "finetune", "experiments", "evals", "exercises", "widgets", "demo")
# room -> rooms it may import (the core is always allowed)
ALLOWED = {"core": set(), "interop": set(), "interp": {"interop"}, "finetune": set(), "experiments": set(),
           "evals": {"interop", "interp", "finetune"},
           "exercises": {"interop", "interp", "finetune", "experiments", "evals"},
           "widgets": {"interop", "interp", "finetune", "experiments", "evals", "exercises"},
           "demo": {"interop", "interp", "finetune", "experiments", "evals"}}
MAX_CORE = 25  # modules directly in tinylib/, __init__ included: what a reader lists in one breath
# rooms whose __init__ docstring is their table of contents (the others are being written this session)
INDEXED_ROOMS = ("interop", "finetune", "experiments", "widgets")


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "core"  # a room's __init__ is in the room


def imports_of(path: Path, package: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of `package` modules in a file."""
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    type_only = {id(n) for i in ast.walk(tree)
                 if isinstance(i, ast.If) and "TYPE_CHECKING" in ast.unparse(i.test) for n in ast.walk(i)}
    out = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from tinylib import checkpoint` imports the module tinylib.checkpoint
            names = [f"{node.module}.{a.name}" if node.module == package else node.module for a in node.names]
        else:
            continue
        out += [(n, node.lineno, id(node) in local) for n in names if n.split(".")[0] == package]
    return out


def local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every import statement inside a function."""
    tree = ast.parse(path.read_text())
    functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return [(n.lineno, ast.unparse(n)) for f in functions for n in ast.walk(f)
            if isinstance(n, (ast.Import, ast.ImportFrom))]


def commented(lines: list[str], line: int) -> bool:
    """A comment on the import's line, or on a line of the run of imports it belongs to, or just above that
    run."""
    i = line - 1
    while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")):
        i -= 1
    return any("#" in lines[j] for j in range(max(0, i - 1), line))


def layout_problems(package: Path) -> list[str]:
    """Every violation of the import rules in the package folder `package`."""
    name = package.name
    files = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    problems = []
    for mod, path in files.items():
        lines = path.read_text().splitlines()
        for target, line, local in imports_of(path, name):
            target = target if target in files else target.rsplit(".", 1)[0]
            if target not in files or target == mod:
                continue
            graph[mod].add(target)
            src, dst = room_of(mod), room_of(target)
            if dst != "core" and dst != src and dst not in ALLOWED[src]:
                allowed = sorted(ALLOWED[src]) or "only the core"
                problems.append(f"{path.relative_to(package.parent)}:{line}: the {src} module {mod} imports "
                                f"{target} ({dst}); {src} may import {allowed}")
            if local:
                problems.append(f"{path.relative_to(package.parent)}:{line}: {mod} imports {target} inside a "
                                f"function; import tinylib modules at the top of the file")
        for line, text in local_imports(path):
            if text.split()[1].split(".")[0] == name:
                continue
            if not commented(lines, line):
                problems.append(f"{path.relative_to(package.parent)}:{line}: function-local `{text}` has no "
                                f"comment saying why it is not at the top (heavy or optional dependency?)")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other (depth-first search)."""
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def copy_of_tinylib(tmp_path: Path) -> Path:
    """The package copied, for a test to plant a mistake in."""
    pkg = tmp_path / "tinylib"
    shutil.copytree(ROOT / "tinylib", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


def test_imports_point_one_way_and_never_in_a_circle():
    assert layout_problems(ROOT / "tinylib") == []


def test_the_check_catches_a_core_module_importing_interp(tmp_path):
    pkg = copy_of_tinylib(tmp_path)
    model = pkg / "model.py"
    model.write_text("from tinylib.interp.attention import head_scores\n" + model.read_text())
    config = pkg / "config.py"
    config.write_text(config.read_text() + "\n\ndef f():\n    import tinylib.model\n")
    problems = layout_problems(pkg)
    assert any("core module tinylib.model imports tinylib.interp.attention (interp)" in p for p in problems)
    assert any("tinylib.config imports tinylib.model inside a function" in p for p in problems)
    # interp imports the model, so the planted import closes a circle
    assert any(p.startswith("import cycle:") and "tinylib.model" in p for p in problems)


def reading_problems(package: Path) -> list[str]:
    """Modules that do not say what they hold, a core too big to list, rooms whose index misses a module."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        where = path.relative_to(package.parent)
        if len(doc.split()) < 5:
            problems.append(f"{where}: no module docstring saying which concern the module holds")
        elif path.parent == package and path.stem != "__init__" and "leave" not in doc:
            problems.append(f"{where}: a core module's docstring says what it leaves to others")
    core = sorted(p.name for p in package.glob("*.py"))
    if len(core) > MAX_CORE:
        problems.append(f"{len(core)} modules in the core (at most {MAX_CORE}): {', '.join(core)}; move a "
                        "workflow into a room or merge modules that share one concern")
    for room in INDEXED_ROOMS:
        index = ast.get_docstring(ast.parse((package / room / "__init__.py").read_text())) or ""
        problems += [f"{package.name}/{room}/__init__.py does not name `{p.stem}` in its docstring"
                     for p in sorted((package / room).glob("*.py"))
                     if p.stem not in ("__init__", "__main__") and f"`{p.stem}`" not in index]
    return problems


def test_each_module_says_what_it_holds_and_the_core_is_small():
    assert reading_problems(ROOT / "tinylib") == []


def test_the_reading_check_catches_a_silent_module_and_a_crowded_core(tmp_path):
    pkg = copy_of_tinylib(tmp_path)
    (pkg / "helpers.py").write_text("X = 1\n")
    (pkg / "finetune" / "extra.py").write_text('"""Something extra for fine-tuning, nobody knows."""\n')
    for i in range(MAX_CORE):
        (pkg / f"m{i}.py").write_text('"""A module that leaves everything to others."""\n')
    problems = reading_problems(pkg)
    assert "tinylib/helpers.py: no module docstring saying which concern the module holds" in problems
    assert any(p.startswith(f"{len(list(pkg.glob('*.py')))} modules in the core (at most") for p in problems)
    assert "tinylib/finetune/__init__.py does not name `extra` in its docstring" in problems


def test_readme_what_is_where_names_every_core_module_and_room():
    section = (ROOT / "README.md").read_text().split("## What is where", 1)[1].split("\n## ", 1)[0]
    core = [p.stem for p in (ROOT / "tinylib").glob("*.py") if p.stem != "__init__"]
    missing = [f"{m}.py" for m in core if f"{m}.py" not in section]
    missing += [f"{r}/" for r in ROOMS if (ROOT / "tinylib" / r).is_dir() and f"{r}/" not in section]
    assert missing == [], f"README's 'What is where' does not name {missing}"


def test_ruff_is_clean_with_a_110_character_limit():
    """pyproject.toml sets line-length 110 and selects E501; the whole repository, notebooks included."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
