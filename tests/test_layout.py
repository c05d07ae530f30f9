"""The tree's rules: imports run one way between the layers, no import cycle, nothing points outside the repo.

The import graph is read from the source (every ``import`` and ``from ... import``, at module level and
inside functions alike), so a cycle hidden behind a lazy import is found too.
"""

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmhsa", "data_prep", "pipelines")

# (importer prefix, forbidden prefix): mmhsa <- data_prep <- pipelines.train <- pipelines.infer <- pipelines.cli
FORBIDDEN = [
    ("mmhsa", "data_prep"),
    ("mmhsa", "pipelines"),
    ("mmhsa", "lightning"),
    ("data_prep", "pipelines"),
    ("data_prep", "lightning"),  # but data_prep.prepare (below): it runs as a Lightning predict, like index
    ("pipelines.train", "pipelines.infer"),
    ("pipelines.train", "pipelines.cli"),
    ("pipelines.infer", "pipelines.cli"),
]

# The one exception: `mmhsa prepare` spreads over DataLoader workers and DDP ranks through Lightning's predict
# loop (data_prep.prepare.PrepareModule); the rest of data_prep (decoding, clips, readers, shards) stays free
# of it, and nothing in data_prep knows training.
ALLOWED = {("data_prep.prepare", "lightning")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules (of the project or not) that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:  # "from pkg import submodule" depends on the submodule
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in known else source)
    return found


def import_graph() -> dict[str, set[str]]:
    known = project_modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_graph_sees_the_project():
    graph = import_graph()
    assert "pipelines.train.fusion" in graph["pipelines.train.qa"]
    assert "pipelines.train" in graph["pipelines.infer.checkpoints"]
    assert "mmhsa.attention.family_torch" in graph["mmhsa.attention.dynamic"]


def test_layers_import_one_way():
    broken = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        for low, high in FORBIDDEN
        if within(module, low) and within(target, high) and (module, high) not in ALLOWED
    )
    assert not broken, "\n".join(broken)


def test_no_import_cycle():
    graph = {m: {t for t in targets if t in project_modules()} for m, targets in import_graph().items()}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(m: str) -> None:
        index[m] = low[m] = counter[0]
        counter[0] += 1
        stack.append(m)
        on_stack.add(m)
        for t in sorted(graph[m]):
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in on_stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            component = []
            while True:
                t = stack.pop()
                on_stack.discard(t)
                component.append(t)
                if t == m:
                    break
            if len(component) > 1 or m in graph[m]:
                cycles.append(sorted(component))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def repository_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but the ignored kinds
        listed = [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not {".git", ".venv", "runs", "data", "__pycache__"} & set(p.relative_to(ROOT).parts)
        ]
    return [ROOT / f for f in listed if f and (ROOT / f).is_file()]


# Built from parts, so that this file does not itself hold the pointers it looks for.
OUTSIDE = [
    "/".join(parts) for parts in (("..", "shared"), ("shared", "guide"), ("shared", "reference"), ("", "work", ""))
]
OUTSIDE.append("hsa-" + "math.md")


@pytest.mark.parametrize("outside", OUTSIDE)
def test_nothing_refers_outside_the_repository(outside):
    hits = []
    for path in repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1) if outside in line]
    assert not hits, f"{outside!r} in " + ", ".join(hits)
