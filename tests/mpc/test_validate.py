"""debug(validate=True): approximations are held to their documented error (protocols/domains.py)
and arguments outside the documented domain are flagged, on every party, 2 and 3 parties."""

from __future__ import annotations

from typing import Any

import torch

import crypten_lite as cl
import crypten_lite.ops  # noqa: F401 - fills the op table
from crypten_lite.protocols.domains import DOMAINS
from crypten_lite.tensor_table import _OPS, OpEntry

aten = torch.ops.aten


def test_documented_errors_hold_inside_the_domain_and_exits_are_flagged(
    run_parties: Any, world_size: int
) -> None:
    inside = torch.linspace(-15.5, 7.5, 47)
    outside = torch.tensor([1.0, 9.0, 12.0])
    pos = torch.linspace(0.01, 900.0, 31)

    def body(party: Any) -> tuple[Any, Any]:
        with cl.use_party(party), torch.no_grad():
            a, b, p = cl.cryptensor(inside), cl.cryptensor(outside), cl.cryptensor(pos)
            with cl.debug(validate=True) as good:
                a.exp()
                p.rsqrt()
                p.sigmoid()
                a.view(-1, 47)[:, :8].softmax(-1)
            with cl.debug(validate=True) as bad:
                b.exp()
                a.view(1, -1).softmax(-1)
            return good, bad

    for good, bad in run_parties(body, world_size):  # every party reaches the same verdicts
        assert good.ok and not good.outside_domain, str(good)
        assert [c.op for c in good.checks if "view" not in c.op and "slice" not in c.op] == [
            "aten.exp.default",
            "aten.rsqrt.default",
            "aten.sigmoid.default",
            "aten._softmax.default",
        ]
        notes = [c.note for c in bad.outside_domain]
        assert len(notes) == 2, str(bad)
        assert "2 of 3 arguments outside exp's domain" in notes[0]
        assert DOMAINS["exp"].describe() in notes[0]
        assert "rows of 47" in notes[1]
        assert "outside their documented domain" in str(bad)


def test_an_error_above_the_documented_one_is_the_first_failure(
    run_parties: Any, monkeypatch: Any
) -> None:
    """An exp off by 1e-3 relative passes a generic 2e-2 bound but not exp's documented
    8.5e-5: validation reports it as the first failure."""
    good = _OPS[aten.exp.default]

    def drifting_exp(t: Any) -> Any:
        return good.impl(t) * 1.001

    monkeypatch.setitem(
        _OPS, aten.exp.default, OpEntry(drifting_exp, None, good.family, good.public_fast)
    )
    x = torch.linspace(-2.0, 2.0, 9)

    def body(party: Any) -> Any:
        with cl.use_party(party), torch.no_grad():
            xe = cl.cryptensor(x)
            with cl.debug(validate=True) as report:
                (xe * 0.5).exp().sigmoid()
            return report

    for report in run_parties(body, 2):
        bad = report.first_failure
        assert bad is not None and bad.op == "aten.exp.default", str(report)
        assert 1e-3 < bad.max_error < 1e-2 and bad.bound < 1e-3
        assert report.checks[0].ok and report.checks[2].ok
