"""Which key signs when: publish before signing, retire after the last token expires."""

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from libs.secrets import Secrets, SigningKey
from services.auth.keys import retired_kids, signing_key

DELAY = 600


def key(kid: str, created_at: int) -> SigningKey:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return SigningKey(kid=kid, private_key_pem=pem, created_at=created_at)


def secrets(keys: list[SigningKey], active: str) -> Secrets:
    return Secrets(
        signing_keys=tuple(keys),
        active_kid=active,
        internal_token_key="k" * 32,
        google_client_secret=None,
        anthropic_api_key=None,
        source="generated",
    )


def test_a_new_key_signs_only_after_the_publish_delay() -> None:
    old, new = key("old", 1_000), key("new", 10_000)
    ring = secrets([old, new], active="old")
    assert signing_key(ring, now=10_000, publish_delay=DELAY).kid == "old"
    assert signing_key(ring, now=10_000 + DELAY - 1, publish_delay=DELAY).kid == "old"
    assert signing_key(ring, now=10_000 + DELAY, publish_delay=DELAY).kid == "new"


def test_keys_older_than_the_active_one_never_sign_again() -> None:
    retired, active = key("retired", 1_000), key("active", 5_000)
    ring = secrets([retired, active], active="active")
    assert signing_key(ring, now=100_000, publish_delay=DELAY).kid == "active"


def test_a_superseded_key_is_kept_until_its_last_token_expired() -> None:
    old, new = key("old", 1_000), key("new", 10_000)
    ring = secrets([old, new], active="old")
    superseded_at = 10_000 + DELAY
    assert retired_kids(ring, now=superseded_at, publish_delay=DELAY) == []
    assert retired_kids(ring, now=superseded_at + 900, publish_delay=DELAY) == []
    assert retired_kids(ring, now=superseded_at + 961, publish_delay=DELAY) == ["old"]
    # Before the new key signs, nothing is retired at all.
    assert retired_kids(ring, now=10_001, publish_delay=DELAY) == []
