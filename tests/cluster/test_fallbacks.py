"""Which nodes a join answer lists as fallbacks: other live nodes that are not draining, this
node's region first, the least loaded first, at most four, no URL twice."""

from __future__ import annotations

from sfu.cluster import NodeInfo, NodeLoad
from sfu.cluster.drain import MAX_FALLBACKS, order_fallbacks


def node(node_id: str, region: str, participants: int = 0, **kw) -> NodeInfo:
    return NodeInfo(
        node_id,
        region,
        f"https://{node_id}.example",
        load=NodeLoad(participants=participants),
        **kw,
    )


def test_own_region_first_least_loaded_first_draining_and_self_left_out():
    nodes = [
        node("self", "eu"),
        node("eu-busy", "eu", participants=50),
        node("eu-idle", "eu", participants=2),
        node("sa-idle", "sa", participants=0),
        node("eu-draining", "eu", participants=0, draining=True),
    ]
    assert order_fallbacks(nodes, "self", "eu") == [
        "https://eu-idle.example",
        "https://eu-busy.example",
        "https://sa-idle.example",
    ]


def test_at_most_a_few_and_no_url_twice():
    nodes = [node(f"n{i}", "eu", participants=i) for i in range(10)]
    nodes.append(NodeInfo("twin", "eu", "https://n0.example"))
    urls = order_fallbacks(nodes, "self", "eu")
    assert len(urls) == MAX_FALLBACKS == len(set(urls))
    assert urls[0] == "https://n0.example"
    assert order_fallbacks([node("self", "eu")], "self", "eu") == []
