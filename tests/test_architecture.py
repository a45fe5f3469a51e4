"""The shape of the code: modules of one concern and bounded size, public names across modules, no
unused dependency, and textft's metrics loadable by any Hugging Face code."""

import ast
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
    assert (PACKAGE / "metrics" / "classification" / "classification.py").is_file()
