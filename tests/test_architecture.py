"""The shape of the code: the layers of textft.layers with no import circle, modules of one concern and
bounded size, public names across modules, no unused dependency, and textft's metrics loadable by any
Hugging Face code."""

import ast
import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "textft"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tests").glob("*.py")])
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


# --- layers -------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    """``textft.a.b`` of a file (a package is its ``__init__``), without the leading ``textft.``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts[1:]) or "textft"


def import_graph() -> dict[str, dict[str, int]]:
    """module → {imported textft module: line}, every import of the file: at the top, inside functions,
    under ``TYPE_CHECKING``, and ``importlib.import_module`` with a literal name. ``from pkg import x``
    points at ``pkg.x`` when that is a module, else at ``pkg`` (its ``__init__``)."""
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}

    def known(dotted: str) -> str | None:
        name = "textft" if dotted == "textft" else dotted.removeprefix("textft.") if dotted.startswith("textft.") else None
        while name and name not in files:  # textft.a.b.func -> a.b
            name = name.rpartition(".")[0] or None
        return name

    graph = {}
    for mod, path in files.items():
        out: dict[str, int] = {}
        package = ("textft." + mod if mod != "textft" else "textft").split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module or ""
                names = [f"{base}.{a.name}" if known(f"{base}.{a.name}") == f"{base}.{a.name}".removeprefix("textft.")
                         else base for a in node.names]
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
            for name in names:
                target = known(name)
                if target and target != mod:
                    out.setdefault(target, node.lineno)
        graph[mod] = out
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of two or more modules (Tarjan)."""
    index, low, stack, found, counter = {}, {}, [], [], iter(range(10**6))

    def visit(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle():
    assert circles(import_graph()) == []


def test_every_module_has_exactly_one_layer():
    from textft.layers import LAYERS

    def matches(module: str) -> list[str]:
        return [layer for layer, _, names in LAYERS for n in names
                if module == n or (n.endswith(".*") and module.startswith(n[:-1]))]

    graph = import_graph()
    assert {m: matches(m) for m in graph if len(matches(m)) != 1} == {}
    listed = [n for _, _, names in LAYERS for n in names if not n.endswith(".*")]
    assert [n for n in listed if n not in graph] == []  # a module renamed or removed leaves no stale entry


def test_imports_run_down_the_layers():
    from textft.layers import UPWARD_IMPORTS, layer_of

    upward = {(m, t): line for m, targets in import_graph().items() for t, line in targets.items()
              if layer_of(t) > layer_of(m)}
    assert {k: v for k, v in upward.items() if k not in UPWARD_IMPORTS} == {}
    assert len(UPWARD_IMPORTS) <= 3 and all(UPWARD_IMPORTS.values())  # each allowed one says why
    assert set(UPWARD_IMPORTS) <= set(upward)  # an exception no longer needed is removed


def test_architecture_md_shows_the_layers_of_the_code():
    from textft.layers import LAYERS

    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = "\n".join(f"| {name} | {what} | {', '.join(modules)} |" for name, what, modules in reversed(LAYERS))
    assert table in text


# --- the service's parts -------------------------------------------------------------------------

SQL = re.compile(r"\b(SELECT\s.*?\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)|ALTER\s+TABLE"
                 r"|PRAGMA\s+\w+|BEGIN\s+IMMEDIATE|COMMIT|ROLLBACK)\b", re.S)  # a statement may span lines


def in_store(mod: str) -> bool:
    """``service.store`` is a package: its modules are the store."""
    return mod == "service.store" or mod.startswith("service.store.")


def test_sql_lives_in_the_store_and_huey_in_the_queue():
    """Every SQL statement of the service is in ``service.store`` and its modules (and sqlite3 is imported there only);
    huey's names (imports, attributes, variables) only in ``service.queue``: the other modules ask those two."""
    sql, huey = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod, tree = module_name(path), ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not in_store(mod) and isinstance(node, (ast.Import, ast.ImportFrom)) and "sqlite3" in (
                    [a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import)
                    else [(node.module or "").split(".")[0]]):
                sql.append(f"{mod}:{node.lineno}: imports sqlite3")
            if not in_store(mod) and isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and SQL.search(node.value):
                sql.append(f"{mod}:{node.lineno}: {node.value[:60]!r}")
            if mod == "service.queue":
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute) else []
            huey += [f"{mod}:{node.lineno}: {n}" for n in names if n == "huey" or n.startswith("huey.")]
    assert sql == [] and huey == []


# --- size and names ------------------------------------------------------------------------------


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, node.end_lineno - node.lineno + 1


def sizes() -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(lines, module) and (lines, module:function) of the package, largest first."""
    modules, funcs = [], []
    for path in PACKAGE.rglob("*.py"):
        name = str(path.relative_to(ROOT))
        text = path.read_text()
        modules.append((len(text.splitlines()), name))
        funcs += [(n, f"{name}:{node.name}") for node, n in functions(ast.parse(text))]
    return sorted(modules, reverse=True), sorted(funcs, reverse=True)


def test_modules_and_functions_stay_small():
    modules, funcs = sizes()
    assert [m for m in modules if m[0] > MAX_MODULE_LINES] == []
    assert [f for f in funcs if f[0] > MAX_FUNCTION_LINES] == []


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in SOURCES:
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("textft"):
                offenders += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
        # attribute access on an imported module: textft.x._name or module._name after `import textft.x as m`
        aliases = {a.asname or a.name for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Import)
                   for a in n.names if a.name.startswith("textft")}
        aliases |= {a.asname or a.name for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ImportFrom)
                    and n.module == "textft" for a in n.names}
        for alias in aliases:
            offenders += [f"{path.name}: {m}" for m in re.findall(rf"\b{re.escape(alias)}\._[a-z]\w*", text)]
    assert offenders == []


def test_every_declared_dependency_is_used_and_pandas_is_gone():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=\[ ]", d)[0].lower().replace("-", "_") for d in deps}
    assert "pandas" not in names
    imports = {"scikit_learn": "sklearn", "pyyaml": "yaml", "huggingface_hub": "huggingface_hub"}
    code = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    unused = [n for n in names if not re.search(rf"^\s*(from|import) {imports.get(n, n)}\b", code, re.M)]
    assert unused == []
    assert not re.search(r"^\s*(from|import) pandas\b", "\n".join(p.read_text() for p in SOURCES), re.M)


def test_install_hints_name_extras_that_exist():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    hinted = set()
    for path in [*PACKAGE.rglob("*.py"), ROOT / "README.md"]:
        hinted |= set(re.findall(r"textft\[(\w+)\]", path.read_text()))
    assert hinted and hinted <= extras, hinted - extras


def test_the_readme_contents_list_every_section_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # headings inside code blocks are not headings
    headings = re.findall(r"^#{2,3} (.+)$", prose, re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    contents = prose[prose.index("## Contents"):]
    contents = contents[:contents.index("\n## ", 1)]
    listed = re.findall(r"\]\(#([\w-]+)\)", contents)
    assert sorted(listed) == sorted(anchors - {"contents"})  # every section once, nothing else
    linked = set(re.findall(r"\]\(#([\w-]+)\)", prose))
    assert linked <= anchors, linked - anchors


def test_the_classification_metric_loads_by_path_like_any_evaluate_module():
    import evaluate

    from textft.metric_modules import metric_path

    # what another library would do with the directory: evaluate.load on the path, nothing from textft
    metric = evaluate.load(metric_path("classification"))
    assert metric.name == "classification"
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    out = metric.compute(predictions=pred, references=y, label_names=["a", "b", "c"])
    assert out["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert out["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert out["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert out["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert set(out["per_class"]) == {"a", "b", "c"} and out["num_examples"] == 200
    # batches added one at a time, as an evaluation loop would
    for start in range(0, 200, 64):
        metric.add_batch(predictions=pred[start:start + 64], references=y[start:start + 64])
    assert metric.compute(label_names=["a", "b", "c"])["accuracy"] == pytest.approx(out["accuracy"])
    # a class that never occurs still gets its row, so the reports of different splits line up
    assert metric.compute(predictions=[0, 0], references=[0, 0], label_names=["a", "b"])["confusion_matrix"] == \
        [[2, 0], [0, 0]]


def test_the_package_ships_its_metric_modules():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["textft"]
    assert "metrics/**/*" in package_data
    assert "service/static/**/*" in package_data  # the page's modules live in subfolders (js/, js/views/)
    assert (PACKAGE / "metrics" / "classification" / "classification.py").is_file()


# --- the web page's script -----------------------------------------------------------------------

STATIC = PACKAGE / "service" / "static"
JS_IMPORT = re.compile(r'^import\s+(?:[\w$*{}\s,]+?\s+from\s+)?"([^"]+)";', re.M)


def js_modules() -> dict[str, Path]:
    """The page's ES modules by their path under ``static/js``."""
    return {p.relative_to(STATIC / "js").as_posix(): p for p in sorted((STATIC / "js").rglob("*.js"))}


def js_import_graph() -> dict[str, dict[str, int]]:
    """module → {imported module: line}; an import of something that is no module of the page is kept as
    written, so that the test below names it."""
    graph = {}
    for name, path in js_modules().items():
        text = path.read_text(encoding="utf-8")
        graph[name] = {}
        for m in JS_IMPORT.finditer(text):
            target = (Path(name).parent / m.group(1)).as_posix() if m.group(1).startswith(".") else m.group(1)
            graph[name][os.path.normpath(target)] = text.count("\n", 0, m.start()) + 1
    return graph


def test_the_page_script_is_small_modules_of_small_functions():
    from js_functions import functions

    modules = sorted((len(p.read_text().splitlines()), name) for name, p in js_modules().items())
    found = sorted(((f.lines, f"{name}:{f.line}:{f.name}") for name, p in js_modules().items()
                    for f in functions(p.read_text(encoding="utf-8"))), reverse=True)
    assert len(modules) >= 10 and len(found) > 100  # the checker reads the page, not an empty folder
    assert [m for m in modules if m[0] > MAX_MODULE_LINES] == []
    assert [f for f in found if f[0] > MAX_FUNCTION_LINES] == []


def test_the_page_script_is_one_module_graph_without_circles_or_html_strings():
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<script[^>]*>", page) == ['<script type="module" src="/static/js/main.js">']
    graph = js_import_graph()
    assert {(m, t) for m, targets in graph.items() for t in targets if t not in graph} == set()  # no CDN, no typo
    assert circles(graph) == []
    reached, todo = set(), ["main.js"]
    while todo:
        reached.add(module := todo.pop())
        todo += [t for t in graph[module] if t not in reached]
    assert sorted(set(graph) - reached) == []  # no module left behind
    # the element builder puts data in as text: no markup parsed from strings anywhere
    unsafe = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|import\(")
    assert [n for n, p in js_modules().items() if unsafe.search(p.read_text(encoding="utf-8"))] == []


def test_the_page_keeps_no_copy_of_the_tasks_metrics():
    from textft.tasks import DEFAULT_TASK, METRIC_NAMES, describe_tasks

    # records that name no task are the default task's, which GET /v1/tasks lists first (tasks.js)
    assert describe_tasks()[0]["name"] == DEFAULT_TASK

    # the training loss is every task's; the rest is named, directed and chosen by GET /v1/tasks
    names = {k for k in METRIC_NAMES if k != "loss"} | {v for k, v in METRIC_NAMES.items() if k != "loss"}
    copies = {n: sorted(set(re.findall(r"""["'`](?:%s)["'`]""" % "|".join(map(re.escape, names)), p.read_text())))
              for n, p in js_modules().items()}
    assert {n: c for n, c in copies.items() if c} == {}


JS_SNIPPET = r"""
// function hidden() { in a comment }
export function quoting(s) {
  const a = "}}{", b = '{\'}', c = `}${"{"}${ { x: 1 }.x }${`${`{`}`}{`;  /* } */
  const re = /[}{/]+\/{2}/g, ratio = (a.length + 1) / 2 / b.length;
  if (re.test(s)) { return a; }
  return /}/.test(c) ? ratio : b;
}
class Chart {
  constructor(box) {
    this.box = box;
  }
  get width() { return this.box.clientWidth; }
  async draw(points) {
    for (const p of points) { this.box.append(p); }
  }
}
const view = {
  render(job) {
    return job;
  },
  title: function () {
    return "t";
  },
};
const onLog = async (entry) => {
  entry.points.forEach((p) => {
    p.seen = true;
  });
};
const pick = (x) => ({ x });
"""


def test_the_js_function_checker_reads_functions_past_strings_regexes_and_comments():
    from js_functions import functions, tokenize

    found = [(f.name, f.line, f.lines) for f in functions(JS_SNIPPET)]
    assert found == [("quoting", 3, 6), ("constructor", 10, 3), ("width", 13, 1), ("draw", 14, 3),
                     ("render", 19, 3), ("title", 22, 3), ("onLog", 26, 5), ("<anonymous>", 27, 3)]
    assert [t.kind for t in tokenize("x = a / b / c; y = /a\\/b[/]/gi.test(s);")].count("regex") == 1
    # a template's text is a token; its ${...} parts are code, a template inside one included
    assert [t.text for t in tokenize("z = `a${`b${c}`}d`;")] == ["z", "=", "`a${", "`b${", "c", "}", "`", "}", "d`", ";"]
    assert [t.text for t in tokenize("return /=}/.source")][:2] == ["return", "/=}/"]


@pytest.mark.parametrize("body", [79, 80])
def test_the_js_function_checker_counts_every_line_of_a_function(body):
    from js_functions import functions

    source = "export function long(a) {\n" + "  a += 1;\n" * (body - 2) + "  return a;\n}\n"
    (f,) = functions(source)
    assert (f.name, f.lines, f.lines > MAX_FUNCTION_LINES) == ("long", body + 1, body + 1 > 80)
