"""Webhook endpoints are https:// on public addresses: every other address is refused, at
registration and before every call, whatever a name resolves to."""

from __future__ import annotations

import ipaddress

import pytest

from fanout.webhooks import addresses


def resolving_to(*found: str) -> addresses.Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        return list(found)

    return resolve


PUBLIC = resolving_to("93.184.215.14")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/hook", "must be an https:// URL"),
        ("https://10.0.0.1/hook", "10.0.0.1, a private address"),
        ("https://169.254.169.254/latest/meta-data", "the cloud metadata address"),
        ("https://[::1]/hook", "::1, a loopback address"),
        ("https://[fd00:ec2::254]/", "a unique-local address"),
        ("https://[::ffff:127.0.0.1]/", "a loopback address"),
        ("https://192.168.1.20/", "a private address"),
        ("https://169.254.10.1/", "a link-local address"),
        ("https://100.64.0.1/", "not a public address"),
        ("https://0.0.0.0/", "an unspecified address"),
        ("ftp://example.com/", "must be an https:// URL"),
        ("https://user:pw@example.com/", "must not carry a user or password"),
        ("https:///nohost", "has no host"),
    ],
)
async def test_registration_refuses_addresses_that_are_not_public(url: str, why: str) -> None:
    with pytest.raises(addresses.RefusedAddress, match=why.replace("[", r"\[")):
        await addresses.check_url(url, resolver=PUBLIC, allow_private=False)


async def test_a_name_resolving_to_loopback_is_refused_naming_both() -> None:
    with pytest.raises(addresses.RefusedAddress) as refused:
        await addresses.check_url(
            "https://hooks.example.com/x", resolver=resolving_to("127.0.0.1"), allow_private=False
        )
    assert "hooks.example.com resolves to such an address, a loopback address" in str(refused.value)
    # A name's addresses are not told: they would map a private network for the caller.
    assert "127.0.0.1" not in str(refused.value)


async def test_one_private_address_among_public_ones_is_refused() -> None:
    resolver = resolving_to("93.184.215.14", "10.1.2.3")
    with pytest.raises(addresses.RefusedAddress, match="a private address"):
        await addresses.check_url("https://a.example/", resolver=resolver, allow_private=False)


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    async def nowhere(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(addresses.RefusedAddress, match="does not resolve"):
        await addresses.check_url("https://nowhere.example/", resolver=nowhere, allow_private=False)


async def test_public_addresses_and_names_pass() -> None:
    target = await addresses.check_url(
        "https://hooks.example.com:8443/in?x=1", resolver=PUBLIC, allow_private=False
    )
    assert target == addresses.Target("https", "hooks.example.com", 8443, "/in?x=1")
    await addresses.check_url("https://[2606:4700::1111]/", resolver=PUBLIC, allow_private=False)


async def test_allow_private_lets_loopback_and_http_through() -> None:
    target = await addresses.check_url(
        "http://127.0.0.1:9000/hook", resolver=PUBLIC, allow_private=True
    )
    assert (target.scheme, target.host, target.port) == ("http", "127.0.0.1", 9000)


def test_refusal_names_each_kind_of_address() -> None:
    assert addresses.refusal(ipaddress.ip_address("8.8.8.8")) is None
    assert addresses.refusal(ipaddress.ip_address("fe80::1")) == "a link-local address"
    assert addresses.refusal(ipaddress.ip_address("224.0.0.1")) == "a multicast address"


def test_ipv4_inside_ipv6_and_site_local_are_judged_as_what_they_reach() -> None:
    # 6to4 wrapping the metadata address, and the deprecated site-local range.
    assert (
        addresses.refusal(ipaddress.ip_address("2002:a9fe:a9fe::")) == "the cloud metadata address"
    )
    assert addresses.refusal(ipaddress.ip_address("2002:0a00:0001::")) == "a private address"
    assert addresses.refusal(ipaddress.ip_address("fec0::1")) == "a site-local address"
    assert addresses.refusal(ipaddress.ip_address("2002:0808:0808::")) is None


async def test_a_name_beyond_ascii_is_called_by_its_idna_form() -> None:
    target = await addresses.check_url(
        "https://bücher.example/hook", resolver=PUBLIC, allow_private=False
    )
    assert target.host == "xn--bcher-kva.example"
