"""The architecture of docs/ARCHITECTURE.md, checked by scanning every module's source.

A module may import only from its own layer or below, and modules of one layer import each
other without cycles; ``zmq``, ``subprocess`` and ``multiprocessing`` only in the launcher
(L6); ``pickle`` nowhere; every module's docstring names its exact layer; shares are opened in
one place (``protocols/opening.py``); and the layer table of docs/ARCHITECTURE.md is the map
below.
"""

from __future__ import annotations

import ast
import re
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
    "crypten_lite.runtime": 1,  # the runtime package __init__ (imports nothing)
    "crypten_lite.runtime.ring": 1,
    "crypten_lite.runtime.encoding": 1,
    "crypten_lite.runtime.prg": 1,
    "crypten_lite.runtime.wire": 2,
    "crypten_lite.runtime.comm": 2,
    "crypten_lite.runtime.dealer": 2,
    "crypten_lite.runtime.party": 2,
    "crypten_lite.runtime.helper": 2,
    "crypten_lite.protocols": 3,
    "crypten_lite.tensor": 4,
    "crypten_lite.tensor_table": 4,
    "crypten_lite.tensor_context": 4,
    "crypten_lite.binary": 4,
    "crypten_lite.bridge": 4,
    "crypten_lite.ops": 4,
    "crypten_lite.nn": 5,
    "crypten_lite.api": 5,
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


def test_every_layer_key_names_an_existing_module() -> None:
    """A stale key (a module that was renamed or removed) would hide a misplaced new one."""
    known = {module for module, _ in modules()}
    stale = [key for key in LAYERS if key not in known]
    assert not stale, f"LAYERS keys without a module: {stale}"


@pytest.mark.parametrize(
    ("module", "path"), modules(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_module_docstring_names_its_exact_layer(module: str, path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    found = re.search(r"\bLayer L(\d)\b", doc)
    assert found is not None, f"{module}: the docstring does not say 'Layer L<n>'"
    assert int(found.group(1)) == layer_of(module), (
        f"{module}: the docstring says Layer L{found.group(1)}, the map says L{layer_of(module)}"
    )


def _internal_imports(path: Path, module: str) -> set[str]:
    """The crypten_lite modules ``module`` imports at module level, resolved to known modules
    (``from pkg import name`` counts as ``pkg.name`` when that is a module, else ``pkg``)."""
    known = {m for m, _ in modules()}
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in tree.body:  # module level only: imports inside functions are not allowed anyway
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            if name in known and name != module:
                out.add(name)
    return out


def test_no_import_cycles_within_a_layer() -> None:
    """Imports go down between layers (above); within one layer they must not loop either."""
    graph = {module: _internal_imports(path, module) for module, path in modules()}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A package's __init__ importing its own submodules is how packages export names,
            # and a submodule importing its package would be the cycle: keep both edges.
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


# One door to disclosure (STYLE.md rule 3): a library module that hands a value to another
# party through the communicator does it in protocols/opening.py (open_shares /
# open_xor_shares), except at the sites listed here, which move public data only — the reason
# is the audit note. A new call site fails until it is opened through opening.py or listed.
PUBLIC_CALL_SITES = {
    "crypten_lite.runtime.party": "set-up: configuration fingerprints and X25519 public keys",
    "crypten_lite.runtime.dealer.third_party": "requests to the dealer process and its seeded replies",
    "crypten_lite.protocols.sharing": "the shape of a secret input (public)",
    "crypten_lite.protocols.helper_dealer": "3-to-2 resharing: party 2's share under a mask "
    "party 1 does not know (uniform to it)",
    "crypten_lite.runtime.helper": "bridged ops' public outputs, which parties 0 and 1 already know, "
    "sent to party 2",
    "crypten_lite.encrypted": "load_from_party: the size and header of the file (public)",
    "crypten_lite.generation": "generate(dst=...): dst announces whether every sequence has "
    "reached EOS (a declared disclosure: the number of generated steps)",
    "crypten_lite.preprocessing": "a prepared plan's identity: random public words from party 0",
}
COMM_CALLS = {
    *("send", "recv", "exchange", "route", "broadcast", "gather", "all_gather", "all_reduce"),
    *("_send_one", "_recv_one"),  # the message primitives, for callers that count rounds apart
}
OPENING_MODULE = "crypten_lite.protocols.opening"


def _comm_calls(path: Path) -> list[tuple[str, int]]:
    """``(method, line)`` of every ``<x>.comm.<method>(...)``, ``comm.<method>(...)`` and
    ``<x>._comm.<method>(...)`` call in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name in ("comm", "_comm") and node.func.attr in COMM_CALLS:
                out.append((node.func.attr, node.lineno))
    return out


def test_shares_are_opened_only_in_protocols_opening() -> None:
    for module, path in modules():
        if layer_of(module) == 6 or module in ("crypten_lite.runtime.comm", OPENING_MODULE):
            continue  # the transports implement these calls; opening.py is the door
        for method, line in _comm_calls(path):
            assert module in PUBLIC_CALL_SITES, (
                f"{path.relative_to(ROOT)}:{line}: comm.{method} outside protocols/opening.py "
                "(open through open_shares / open_xor_shares, or list a public-data site)"
            )


def test_the_opening_door_is_used() -> None:
    """The scan above must see something: opening.py itself calls the communicator."""
    assert _comm_calls(dict(modules())[OPENING_MODULE])


def test_the_open_functions_are_defined_only_in_opening() -> None:
    for module, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in (
                "open_shares",
                "open_xor_shares",
            ):
                assert module == OPENING_MODULE, f"{module} defines {node.name}"


def _doc_layer_table() -> dict[str, int]:
    """``module -> layer`` from the layer table of docs/ARCHITECTURE.md (rows ``| L<n> | ...``,
    every backquoted dotted name in the second column is a module or package)."""
    table = {}
    for line in (ROOT / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        row = re.match(r"\|\s*L(\d)\s*\|([^|]*)\|", line)
        if row:
            for name in re.findall(r"`(crypten_lite[\w.]*)`", row.group(2)):
                table[name] = int(row.group(1))
    return table


def test_the_architecture_document_shows_this_layer_map() -> None:
    doc = _doc_layer_table()
    assert doc == LAYERS, (
        f"docs/ARCHITECTURE.md layer table differs from LAYERS: only in the doc "
        f"{sorted(set(doc.items()) - set(LAYERS.items()))}, only here "
        f"{sorted(set(LAYERS.items()) - set(doc.items()))}"
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
