"""The layer rules of DESIGN.md §2, checked by scanning every import statement.

A module may import only from its own layer or below; ``zmq``, ``subprocess`` and
``multiprocessing`` only in the launcher (L6); ``pickle`` nowhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "crypten_lite": ROOT / "crypten_lite",
    "crypten_lite.protocols": ROOT / "protocols",
    "crypten_lite.launcher": ROOT / "launcher",
}

# Module (or package prefix) -> layer. Longest prefix wins; anything unlisted is an error, so a
# new module must be placed in a layer on purpose.
LAYERS = {
    "crypten_lite.errors": 0,
    "crypten_lite.config": 0,
    "crypten_lite.ring": 1,
    "crypten_lite.encoding": 1,
    "crypten_lite.prg": 1,
    "crypten_lite.wire": 2,
    "crypten_lite.comm": 2,
    "crypten_lite.dealer": 2,
    "crypten_lite.party": 2,
    "crypten_lite.protocols": 3,
    "crypten_lite.tensor": 4,
    "crypten_lite.tensor_table": 4,
    "crypten_lite.tensor_context": 4,
    "crypten_lite.binary": 4,
    "crypten_lite.ops": 4,
    "crypten_lite.nn": 5,
    "crypten_lite.api": 5,
    "crypten_lite.serialization": 5,
    "crypten_lite.profiling": 5,
    "crypten_lite.debug": 5,
    "crypten_lite.encrypted": 5,
    "crypten_lite.check": 5,
    "crypten_lite": 5,  # the package __init__
    "crypten_lite.launcher": 6,
}
# Third-party imports allowed from a layer upwards.
THIRD_PARTY_MIN_LAYER = {"torch": 1, "numpy": 1, "cryptography": 1, "safetensors": 4}
LAUNCHER_ONLY = {"zmq", "subprocess", "multiprocessing"}
BANNED = {"pickle", "cPickle", "dill", "shelve", "marshal"}


def layer_of(module: str) -> int:
    best = None
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, layer)
    if best is None:
        raise AssertionError(f"module {module} has no layer in tests/test_architecture.py")
    return best[1]


def modules() -> list[tuple[str, Path]]:
    found = []
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found.append((".".join([package, *parts]), path))
    return found


def imports(path: Path, module: str) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.append((f"<relative import in {module}>", node.lineno))
            elif node.module:
                out.append((node.module, node.lineno))
    return out


@pytest.mark.parametrize(
    ("module", "path"), modules(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_imports_follow_layers(module: str, path: Path) -> None:
    mine = layer_of(module)
    for name, line in imports(path, module):
        where = f"{path.relative_to(ROOT)}:{line}"
        assert not name.startswith("<relative"), f"{where}: relative import (use absolute imports)"
        top = name.split(".")[0]
        assert top not in BANNED, f"{where}: imports {name} (no pickle anywhere)"
        if top in LAUNCHER_ONLY:
            assert mine == 6, f"{where}: {name} may only be imported in the launcher layer"
        if top == "crypten_lite":
            assert layer_of(name) <= mine, (
                f"{where}: L{mine} module imports {name} (L{layer_of(name)})"
            )
        elif top in THIRD_PARTY_MIN_LAYER:
            assert mine >= THIRD_PARTY_MIN_LAYER[top], f"{where}: L{mine} module imports {name}"


def test_protocols_never_import_the_tensor_type() -> None:
    for module, path in modules():
        if module.startswith("crypten_lite.protocols"):
            for name, line in imports(path, module):
                assert not name.startswith(("crypten_lite.tensor", "crypten_lite.ops")), (
                    f"{path.name}:{line} imports {name}"
                )


def test_every_package_docstring_names_its_layer() -> None:
    for module, path in modules():
        if path.name == "__init__.py":
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "Layer L" in doc or "layer" in doc.lower(), (
                f"{module} docstring does not name its layer"
            )


def test_source_never_mentions_pickle_loading() -> None:
    for _module, path in modules():
        text = path.read_text()
        assert "torch.load(" not in text, f"{path}: torch.load unpickles"
        assert "np.load(" not in text or "allow_pickle=False" in text, (
            f"{path}: np.load may unpickle"
        )


def test_every_package_is_listed_in_pyproject() -> None:
    """A regular (non-editable) install ships only the packages named in pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for package, folder in SOURCES.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            found.add(".".join([package, *rel.parts]))
    assert found == listed, (
        f"pyproject.toml packages: missing {found - listed}, extra {listed - found}"
    )
