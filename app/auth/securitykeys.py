"""WebAuthn security keys through py_webauthn: the options a browser needs for a ceremony and the
checks of the browser's answer (no database here)."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import webauthn
from webauthn.helpers import bytes_to_base64url, generate_challenge
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from app.auth.refusal import Refusal
from app.tls import names_host

TIMEOUT_MS = 120_000


class SecurityKeyError(Refusal):
    """The key's answer does not verify, or keys cannot work on this address."""


@dataclass(frozen=True)
class RelyingParty:
    """Who the keys are bound to: a host or domain name (rp_id) and the page's exact origin."""

    id: str
    origin: str
    name: str


def relying_party(
    host: str, origin: str, configured: str | None, name: str, served: frozenset[str] = frozenset()
) -> RelyingParty:
    """The relying party for a page at `origin` on `host`: the configured RP ID when set (the host
    must be it or below it, and one of the `served` names of the node's HTTPS certificate),
    else the host itself. Browsers refuse IP addresses as RP IDs.

    A key bound to a domain answers for any host under it, and the origin its answer must come
    from is the page's, taken from the request's Host header: without the check against the
    served names, a relay on a sibling host could pass its own origin as the page's and have a
    victim's key answer for a login it started with a stolen password."""
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        raise SecurityKeyError(
            "Security keys need the GUI opened by a host name, not by an IP address."
        )
    rp_id = configured or host
    if host != rp_id and not host.endswith("." + rp_id):
        raise SecurityKeyError("Security keys work only under %s (WEBAUTHN_RP_ID).", rp_id)
    if configured and not names_host(served, host):
        raise SecurityKeyError(
            "Security keys work only under a name of this node's HTTPS certificate (%s).",
            ", ".join(sorted(served)) or "-",
        )
    return RelyingParty(rp_id, origin, name)


def _descriptors(credential_ids: list[str]) -> list[PublicKeyCredentialDescriptor]:
    return [
        PublicKeyCredentialDescriptor(id=webauthn.base64url_to_bytes(c)) for c in credential_ids
    ]


def registration_options(
    rp: RelyingParty, user_handle: bytes, username: str, existing: list[str]
) -> tuple[str, str]:
    """(options JSON for navigator.credentials.create, the challenge in base64url)."""
    challenge = generate_challenge()
    options = webauthn.generate_registration_options(
        rp_id=rp.id,
        rp_name=rp.name,
        user_name=username,
        user_id=user_handle,
        challenge=challenge,
        timeout=TIMEOUT_MS,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.DISCOURAGED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=_descriptors(existing),
    )
    return webauthn.options_to_json(options), bytes_to_base64url(challenge)


@dataclass(frozen=True)
class NewKey:
    credential_id: str
    public_key: str
    sign_count: int


def verify_registration(rp: RelyingParty, credential: str, challenge: str) -> NewKey:
    try:
        verified = webauthn.verify_registration_response(
            credential=credential,
            expected_challenge=webauthn.base64url_to_bytes(challenge),
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
        )
    except (WebAuthnException, ValueError) as exc:
        raise SecurityKeyError("The security key's answer does not verify: %s", exc) from exc
    return NewKey(
        bytes_to_base64url(verified.credential_id),
        bytes_to_base64url(verified.credential_public_key),
        verified.sign_count,
    )


def authentication_options(rp: RelyingParty, credential_ids: list[str]) -> tuple[str, str]:
    """(options JSON for navigator.credentials.get, the challenge in base64url)."""
    challenge = generate_challenge()
    options = webauthn.generate_authentication_options(
        rp_id=rp.id,
        challenge=challenge,
        timeout=TIMEOUT_MS,
        allow_credentials=_descriptors(credential_ids),
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    return webauthn.options_to_json(options), bytes_to_base64url(challenge)


def credential_id_of(credential: str) -> str:
    """The credential ID a browser's answer names (not yet verified: only to find the key)."""
    try:
        raw_id = json.loads(credential)["rawId"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SecurityKeyError("The browser sent no security key answer.") from exc
    if not isinstance(raw_id, str):
        raise SecurityKeyError("The browser sent no security key answer.")
    return raw_id


def verify_authentication(
    rp: RelyingParty, credential: str, challenge: str, public_key: str, sign_count: int
) -> int:
    """The authenticator's new signature counter, once the answer verifies."""
    try:
        verified = webauthn.verify_authentication_response(
            credential=credential,
            expected_challenge=webauthn.base64url_to_bytes(challenge),
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            credential_public_key=webauthn.base64url_to_bytes(public_key),
            credential_current_sign_count=sign_count,
        )
    except (WebAuthnException, ValueError) as exc:
        raise SecurityKeyError("The security key's answer does not verify: %s", exc) from exc
    return verified.new_sign_count
