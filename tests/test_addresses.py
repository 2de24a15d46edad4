"""Address lists from the configuration and the membership tests on them."""

from __future__ import annotations

import ipaddress
import re

import pytest

from sidecar.addresses import http_url, is_loopback, parse_networks, peer_address, within


def test_a_list_of_addresses_and_networks() -> None:
    everyone, networks = parse_networks(" 10.0.0.0/8, 127.0.0.1 ,, 2001:db8::/32 ")
    assert not everyone
    assert networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_star_is_everyone_and_empty_is_no_one() -> None:
    assert parse_networks("*") == (True, ())
    assert parse_networks("") == (False, ())


def test_host_bits_are_tolerated_and_a_bad_item_is_named() -> None:
    assert parse_networks("10.1.2.3/8")[1] == (ipaddress.ip_network("10.0.0.0/8"),)
    with pytest.raises(ValueError, match=rf"^{re.escape('10.0.0.300')}$"):
        parse_networks("10.0.0.0/8, 10.0.0.300")


def test_ipv4_mapped_peers_count_as_ipv4() -> None:
    assert peer_address("::ffff:10.1.2.3") == ipaddress.ip_address("10.1.2.3")
    assert within("::ffff:10.1.2.3", parse_networks("10.0.0.0/8")[1])
    assert not within("192.168.0.1", parse_networks("10.0.0.0/8")[1])


@pytest.mark.parametrize("peer", [None, "", "not-an-address", "unix:/run/x.sock"])
def test_unknown_peers_are_in_no_list(peer: str | None) -> None:
    assert peer_address(peer) is None
    assert not within(peer, parse_networks("0.0.0.0/0, ::/0")[1])
    assert not is_loopback(peer)


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [("127.0.0.1", True), ("127.0.0.6", True), ("::1", True), ("::ffff:127.0.0.1", True),
     ("10.0.0.1", False), ("::2", False)],
)  # fmt: skip
def test_loopback(peer: str, loopback: bool) -> None:
    assert is_loopback(peer) is loopback


@pytest.mark.parametrize(
    ("address", "url"),
    [
        (("127.0.0.1", 9000), "http://127.0.0.1:9000"),
        (("::1", 9000), "http://[::1]:9000"),
        (None, "http://?"),
    ],
)
def test_urls_of_bound_addresses_bracket_ipv6(address: tuple[str, int] | None, url: str) -> None:
    assert http_url(address) == url
