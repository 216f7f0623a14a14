"""The constraint language: what yapapi's DemandBuilder and yagna's decorations write, matched both ways."""

from __future__ import annotations

import pytest
from yapapi.props.builder import DemandBuilder

from beacon_golem.sandbox import constraints
from beacon_golem.sandbox.constraints import ConstraintSyntaxError, mutual_match, parse
from tests.sandbox.requestor import GpuPayload

GPU = "golem.!exp.gap-35.v1.inf.gpu"


@pytest.mark.parametrize(
    ("text", "props", "expected"),
    [
        ("(a=b)", {"a": "b"}, True),
        ("(a=b)", {"a": "c"}, False),
        ("(a=b)", {}, False),
        ("(a=*)", {"a": ""}, True),
        ("(a=*)", {"b": 1}, False),
        ("(a=nv*)", {"a": "nvidia"}, True),
        ("(a=nv*)", {"a": "amd"}, False),
        ("(a=*4090)", {"a": "NVIDIA GeForce RTX 4090"}, True),
        ("(a>=16)", {"a": 16.0}, True),
        ("(a>=16)", {"a": 8}, False),
        ("(a>1)", {"a": "3"}, True),  # yagna's decoration value is the string "3"
        ("(a<1)", {"a": 1}, False),
        ("(a<=1.5)", {"a": 1.5}, True),
        ("(a>=16)", {"a": "lots"}, False),
        ("(a=16)", {"a": 16.0}, True),
        ("(a=true)", {"a": True}, True),
        ("(a=false)", {"a": True}, False),
        ("(caps=vpn)", {"caps": ["inet", "vpn"]}, True),
        ("(caps=vpn)", {"caps": ["inet"]}, False),
        ("(!(a=b))", {"a": "c"}, True),
        ("(!(a=b))", {"a": "b"}, False),
        ("(&)", {}, True),
        ("(|)", {}, False),
        ("(&(a=1)(b=2))", {"a": 1, "b": 2}, True),
        ("(&(a=1)(b=2))", {"a": 1, "b": 3}, False),
        ("(|(a=1)(b=2))", {"a": 0, "b": 2}, True),
        ("(&(a=1)\n\t(|(b=*)\n\t(c=*)))", {"a": 1, "c": "x"}, True),
        (r"(a=x\*y)", {"a": "x*y"}, True),
        (r"(a=x\*y)", {"a": "xzzy"}, False),
        (r"(a=\(b\))", {"a": "(b)"}, True),
        (f"({GPU}.memory.total.gib>=24)", {f"{GPU}.memory.total.gib": 24.0}, True),
        (
            "(golem.com.payment.debit-notes.accept-timeout?>=30)",
            {"golem.com.payment.debit-notes.accept-timeout?": 240},
            True,
        ),
        ("", {}, True),
    ],
)
def test_filters_match_as_golem_matches(text: str, props: dict[str, object], expected: bool) -> None:
    assert parse(text).matches(props) is expected


@pytest.mark.parametrize(
    "text",
    ["(a=b", "a=b", "(&(a=b)", "(=b)", "(a)", "(a=b))", "(!(a=b)(c=d))", "(a>=x*)", "(a=(b))", "(&x)", "(a=b\\"],
)
def test_malformed_filters_are_refused(text: str) -> None:
    with pytest.raises(ConstraintSyntaxError):
        parse(text)


def test_failing_names_the_clauses_that_fail() -> None:
    f = parse("(&(a>=16)(b=vpn)(|(c=*)(d=*)))")
    assert f.failing({"a": 32, "b": ["vpn"], "c": 1}) == []
    assert f.failing({"a": 8, "b": ["inet"]}) == ["(a>=16)", "(b=vpn)", "(|(c=*)(d=*))"]


def test_nested_properties_are_matched_by_their_dotted_names() -> None:
    props = {"golem": {"inf": {"mem": {"gib": 32.0}}}}
    assert constraints.flatten(props) == {"golem.inf.mem.gib": 32.0}
    assert mutual_match({}, parse("(golem.inf.mem.gib>=16)"), props, parse("")).matched


async def test_what_yapapi_demands_is_parsed_and_matched_against_both_gpu_layouts() -> None:
    builder = DemandBuilder()
    await builder.decorate(GpuPayload(package_url="hash:sha3:00:http://x"))
    demand = parse(builder.constraints)
    base = {
        "golem.runtime.name": "vm-nvidia",
        "golem.runtime.capabilities": ["inet", "vpn"],
        "golem.inf.mem.gib": 32.0,
        "golem.inf.storage.gib": 128.0,
        "golem.inf.cpu.threads": 8,
    }
    assert demand.matches({**base, f"{GPU}.model": "NVIDIA L4"})
    assert demand.matches({**base, f"{GPU}.d0.model": "NVIDIA L4", f"{GPU}.d0.quantity": 2})
    assert not demand.matches(base)
    assert not demand.matches({**base, f"{GPU}.model": "x", "golem.runtime.name": "vm"})


def test_matching_is_mutual() -> None:
    demand_props = {"golem.node.debug.subnet": "public", "golem.srv.comp.expiration": 1}
    offer_props = {"golem.inf.mem.gib": 32.0}
    offer_constraints = parse("(&(golem.srv.comp.expiration>0)(golem.node.debug.subnet=public))")
    assert mutual_match(demand_props, parse("(golem.inf.mem.gib>=16)"), offer_props, offer_constraints).matched
    result = mutual_match(
        {**demand_props, "golem.node.debug.subnet": "testnet"},
        parse("(golem.inf.mem.gib>=64)"),
        offer_props,
        offer_constraints,
    )
    assert not result.matched
    assert result.demand_failing == ["(golem.inf.mem.gib>=64)"]
    assert result.offer_failing == ["(golem.node.debug.subnet=public)"]
    assert "the offer requires (golem.node.debug.subnet=public)" in result.reason
