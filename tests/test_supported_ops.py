"""The README's table of supported ops and modules is generated from the dispatch table
(``scripts/supported_ops.py``); this fails when the README's copy is stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "supported_ops", REPO / "scripts" / "supported_ops.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script()


def test_generated_block_lists_the_registered_ops(script: ModuleType) -> None:
    block = script.render()
    assert block.startswith(script.BEGIN) and block.rstrip().endswith(script.END)
    assert "| `nn.Linear` | yes | yes |" in block
    assert "`mm`" in block and "`relu`" in block
    assert "|" not in "".join(name for names in script._ops_by_family().values() for name in names)


def test_check_mode_detects_a_stale_block(script: ModuleType, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{script.BEGIN}\nold table\n{script.END}\n\nmore text\n")
    assert script.main(["--check", str(readme)]) == 1
    assert script.main(["--write", str(readme)]) == 0
    assert script.main(["--check", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\n") and text.endswith("\n\nmore text\n")
    readme.write_text("# no markers\n")
    assert script.main(["--check", str(readme)]) == 2


def test_readme_block_is_up_to_date(script: ModuleType) -> None:
    if script.split_readme(README.read_text(encoding="utf-8")) is None:
        pytest.skip("README.md has no supported-ops markers yet")
    assert script.main(["--check", str(README)]) == 0, (
        "README.md's supported-ops block is stale: run "
        "`python scripts/supported_ops.py --write README.md`"
    )


# Core aten coverage can only go up: raise this floor when an op is added (never lower it).
CORE_COVERAGE_FLOOR = 156


def test_core_aten_coverage_only_goes_up(script: ModuleType) -> None:
    covered, total, missing = script.core_coverage()
    assert covered + len(missing) == total
    assert covered >= CORE_COVERAGE_FLOOR, (
        f"core aten coverage fell to {covered}/{total} (floor {CORE_COVERAGE_FLOOR}); "
        f"missing: {missing}"
    )
    assert "aten.sort.default" not in missing and "aten.topk.default" not in missing


def test_core_exclusion_rule_is_narrow(script: ModuleType) -> None:
    """Only ops with no meaning on encrypted real-valued tensors are left out of the count."""
    reasons = {str(op): script._exclusion(op) for op in script.core_aten_ops()}
    assert reasons["aten._fft_r2c.default"] == "complex"
    assert reasons["aten.randn.default"] is not None  # a factory: never sees an encrypted tensor
    for counted in ("aten.add.Tensor", "aten.floor.default", "aten.atan2.default"):
        assert reasons[counted] is None
    assert sum(r is None for r in reasons.values()) > 150
