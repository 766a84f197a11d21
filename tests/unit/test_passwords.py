"""argon2id hashing: the configured cost is the one used, other costs are rehashed, and
an unknown account costs the same verification as a known one."""

from __future__ import annotations

from argon2 import PasswordHasher, Type

from socialhub.config import load_settings
from socialhub.services.passwords import Passwords

CHEAP = {"time_cost": 1, "memory_kib": 1024, "parallelism": 1}


async def test_hash_is_argon2id_at_the_configured_cost() -> None:
    p = Passwords(time_cost=2, memory_kib=2048, parallelism=1)
    stored = await p.hash("correct horse 1")
    assert stored.startswith("$argon2id$v=19$m=2048,t=2,p=1$")
    assert await p.verify(stored, "correct horse 1")
    assert not await p.verify(stored, "correct horse 2")
    assert not await p.verify("not a hash", "correct horse 1")
    assert not p.needs_rehash(stored)


def test_the_default_cost_is_argon2_cffis_rfc_9106_low_memory_profile() -> None:
    auth = load_settings(env={}).auth
    p = Passwords(time_cost=auth.argon2_time_cost, memory_kib=auth.argon2_memory_kib,
                  parallelism=auth.argon2_parallelism)  # fmt: skip
    reference = PasswordHasher()  # argon2-cffi's defaults: RFC 9106, second recommended option
    assert (auth.argon2_time_cost, auth.argon2_memory_kib, auth.argon2_parallelism) == (
        reference.time_cost, reference.memory_cost, reference.parallelism,
    )  # fmt: skip
    assert not p.needs_rehash(reference.hash("x"))


async def test_another_cost_or_type_or_garbage_needs_a_rehash() -> None:
    p = Passwords(**CHEAP)
    older = PasswordHasher(time_cost=2, memory_cost=1024, parallelism=1, type=Type.ID).hash("pw")
    argon2i = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=Type.I).hash("pw")
    assert p.needs_rehash(older) and p.needs_rehash(argon2i) and p.needs_rehash("garbage")
    # An older hash still verifies: the login that finds it rehashes it.
    assert await p.verify(older, "pw")


async def test_verify_none_spends_a_real_verification() -> None:
    p = Passwords(**CHEAP)
    assert await p.verify_none("whatever") is False
    assert p._dummy is not None and p._dummy.startswith("$argon2id$")
