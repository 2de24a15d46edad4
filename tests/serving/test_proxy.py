"""Forwarding headers parsed and resolved through trusted proxies, without sockets."""

from __future__ import annotations

import pytest

from sidecar.serving.proxy import Hop, TrustedProxies, parse_forwarded, parse_x_forwarded


def test_forwarded_elements_become_hops_nearest_proxy_last() -> None:
    hops = parse_forwarded(
        ['for=203.0.113.7;proto=https;host=shop.example, for="[2001:db8::1]:4711"']
    )
    assert hops == [
        Hop("203.0.113.7", 0, "https", "shop.example"),
        Hop("2001:db8::1", 4711, None, None),
    ]


def test_forwarded_without_for_is_ignored_and_quotes_are_removed() -> None:
    assert parse_forwarded(["proto=https", 'for="10.0.0.1:80";by=x']) == [Hop("10.0.0.1", 80)]


@pytest.mark.parametrize(
    ("node", "hop"),
    [
        ("unknown", Hop("unknown", 0)),
        ("10.1.2.3:8080", Hop("10.1.2.3", 8080)),
        ("[::1]", Hop("::1", 0)),
    ],
)
def test_forwarded_nodes(node: str, hop: Hop) -> None:
    assert parse_forwarded([f"for={node}"]) == [hop]


def test_x_forwarded_headers_give_proto_and_host_to_the_client_hop() -> None:
    hops = parse_x_forwarded(["198.51.100.2, 10.0.0.5", "10.0.0.6"], ["https"], ["api.example"])
    assert hops == [
        Hop("198.51.100.2", 0, "https", "api.example"),
        Hop("10.0.0.5", 0),
        Hop("10.0.0.6", 0),
    ]
    # Only a scheme or host, no address: still a hop carrying them.
    assert parse_x_forwarded([], ["https"], []) == [Hop("", 0, "https", None)]


def test_the_client_is_the_nearest_hop_that_is_not_a_trusted_proxy() -> None:
    proxies = TrustedProxies("10.0.0.0/8")
    hops = parse_x_forwarded(["1.1.1.1, 2.2.2.2, 10.0.0.5"], ["https"], ["api.example"])
    # 2.2.2.2 is untrusted: a client could have forged 1.1.1.1 in front of it.
    assert proxies.resolve(hops) == Hop("2.2.2.2", 0, "https", "api.example")


def test_all_hops_trusted_gives_the_first_one_and_no_hops_nothing() -> None:
    proxies = TrustedProxies("*")
    assert proxies.resolve(parse_forwarded(["for=1.1.1.1, for=2.2.2.2"])) == Hop("1.1.1.1", 0)
    assert proxies.resolve([]) is None


def test_trust_is_off_by_default_and_matches_mapped_ipv4() -> None:
    assert not TrustedProxies("").enabled
    proxies = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    assert proxies.enabled
    assert proxies.trusts("::ffff:10.1.2.3")
    assert not proxies.trusts("192.168.1.1")
