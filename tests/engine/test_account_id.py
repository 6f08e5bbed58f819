"""The provider account's id (listener_limits.account): one stable id per account, which
listeners sharing a key agree on and which leads back to no secret."""

from __future__ import annotations

from listener.engine.flow import account_id


def test_the_account_is_a_keyed_fingerprint_never_the_key():
    a = account_id("fusionbrain", "key", "secret")
    assert a.startswith("fusionbrain:") and len(a) == len("fusionbrain:") + 32
    assert "key" not in a.split(":")[1] and "secret" not in a
    assert a != account_id("fusionbrain", "key2", "secret")  # two keys, two budgets
    assert a != account_id("gigachat", "key", "secret")
    assert a == account_id("fusionbrain", "key", "secret")


def test_the_account_id_is_the_same_in_every_release():
    """The id is the row's key in the table: a listener of another version on the same key
    must find the same row, or two budgets would each allow the account's whole limit."""
    assert account_id("fusionbrain", "key", "secret") == (
        "fusionbrain:1e1447986f3e18202215a1bf65ed06c0"
    )
    assert account_id("gigachat", "key", "secret") == "gigachat:e85573167653f4cb80fec532f459876a"
