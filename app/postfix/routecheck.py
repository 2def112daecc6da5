""" "Which route?": what Postfix does with one envelope sender and recipient, given the map set.

The answer comes from the map files Postfix reads (the live set, or the rendering of the version
applied on this node: rendering is deterministic, so those are the same bytes), and every lookup
follows Postfix 3.7's own search order, so the tool shows what the relay does, not what the
configuration meant. The lookup orders mirrored here:

* smtpd `check_sender_access` (smtpd_check.c: check_mail_access(), which calls
  mail_addr_find_strategy() with MA_FIND_FULL | MA_FIND_NOEXT | MA_FIND_DOMAIN |
  MA_FIND_LOCALPART_AT, plus MA_FIND_PDMS or MA_FIND_PDDMDS; see access(5), "EMAIL ADDRESS
  PATTERNS"). When `smtpd_access_maps` is in `parent_domain_matches_subdomains` (Postfix's
  default), `user@sub.example.com` tries `user@sub.example.com`, `sub.example.com`, `example.com`,
  `com` (parent domains, the top-level domain included), then `user@`. When it is not (the
  product's main.cf, postfix-conf/main.cf.fragment, drops it), the parents are tried in the
  dot form instead: `sub.example.com`, `.example.com`, `.com`, so `example.com` matches only
  itself. The null sender is looked up as `<>` only (smtpd_null_access_lookup_key).
* `sender_dependent_relayhost_maps` (trivial-rewrite resolve.c: mail_addr_find() with the default
  strategy): `user@domain`, then `@domain`; never a parent domain. The null sender is looked up
  as `<>` (empty_address_relayhost_maps_lookup_key).
* `smtp_sasl_password_maps` with `smtp_sender_dependent_authentication = yes` (smtp_sasl_glue.c:
  smtp_sasl_passwd_lookup()): `user@domain`, `@domain` (never for the null sender), then the relay
  host name, then the next-hop destination.
* `smtp_tls_policy_maps`: keyed by the next hop exactly as the relay host map writes it; without
  an entry, `smtp_tls_security_level` (the product sets `may`).

Postfix folds lookup keys to lower case (DICT_FLAG_FOLD_FIX; postmap folds keys when it builds a
table), and `recipient_delimiter` is empty by default, so no address extension is stripped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.config import validation
from app.messages import Message, message_of

FRAGMENT = Path(__file__).resolve().parents[2] / "postfix-conf" / "main.cf.fragment"

NULL_SENDER_KEY = "<>"  # smtpd_null_access_lookup_key, empty_address_relayhost_maps_lookup_key
# smtp_tls_security_level when no tls_policy entry matches. Postfix's compiled-in default is
# empty (no TLS); the product's main.cf (postfix-conf/main.cf.fragment) sets `may`.
DEFAULT_TLS_LEVEL = "may"

ALLOWED = Message("allowed")
REJECTED = Message("rejected: sender domain not allowed")
NULL_SENDER_REJECTED = Message("rejected: the null sender <> is not allowed")
DIRECT_TO_MX = Message("direct to the recipient's MX")

_MAX_ADDRESS = 254  # RFC 5321: 256 octets for a path, including the angle brackets
_MAX_LOCAL = 64
# RFC 5322 atext; non-ASCII characters are allowed too (SMTPUTF8 local parts).
_ATEXT_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]+$")
_SPACE_RE = re.compile(r"\s")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_VERSION_RE = re.compile(r"config version (\d+)")


class RouteCheckError(ValueError):
    """The question cannot be answered: `errors` maps a form field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Lookup:
    """One table search: the keys Postfix tries, in order, and the one that matched."""

    table: str
    keys: tuple[str, ...]
    matched_key: str | None = None
    value: str | None = None


@dataclass(frozen=True)
class RouteAnswer:
    sender: str  # as Postfix sees it: local part as given, domain lowercase ASCII; "" for <>
    recipient: str
    sender_domain: str | None  # None for the null sender
    recipient_domain: str
    allowed: bool
    verdict: str  # ALLOWED, REJECTED or NULL_SENDER_REJECTED
    relayhost: str | None  # "[host]:port", or None: DIRECT_TO_MX
    next_hop: str  # the relay host, or the recipient domain (MX lookup)
    tls_mode: str
    tls_from_policy: bool  # False: no tls_policy entry, DEFAULT_TLS_LEVEL applies
    auth_user: str | None  # the SMTP AUTH user; the password is never read into the answer
    maps_version: int | None  # the config version the live maps were rendered from
    lookups: tuple[Lookup, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def null_sender(self) -> bool:
        return self.sender_domain is None

    @property
    def route(self) -> str:
        return self.relayhost or DIRECT_TO_MX


def _bare(value: str) -> str:
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


def _address(value: str, what: str) -> tuple[str, str]:
    """(local part, normalised domain) of an address, or ValueError with a message for `what`."""
    if _CONTROL_RE.search(value):
        raise ValueError(
            Message("The {what} must not contain control characters or line breaks.", what=what)
        )
    if _SPACE_RE.search(value):
        raise ValueError(Message("The {what} must not contain spaces.", what=what))
    if len(value) > _MAX_ADDRESS:
        raise ValueError(
            Message("The {what} has at most {n} characters.", what=what, n=_MAX_ADDRESS)
        )
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(Message("The {what} must be an address like user@example.com.", what=what))
    if len(local) > _MAX_LOCAL:
        raise ValueError(
            Message(
                "The local part of the {what} has at most {n} characters.", what=what, n=_MAX_LOCAL
            )
        )
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise ValueError(
            Message(
                "The local part of the {what} must not start or end with a dot or "
                "hold two dots in a row.",
                what=what,
            )
        )
    if not _ATEXT_RE.match(local.replace(".", "")):
        raise ValueError(
            Message(
                "The local part of the {what} holds characters an address cannot have unquoted "
                "(like @, comma, quotes or brackets).",
                what=what,
            )
        )
    if domain.startswith("["):
        raise ValueError(
            Message("The {what} must have a domain name, not an address literal.", what=what)
        )
    try:
        domain = validation.domain_name(domain, Message("The domain of the {what}", what=what))
    except ValueError as exc:
        raise ValueError(message_of(exc)) from None
    return local, domain


def _parse_map(text: str) -> dict[str, str]:
    """A Postfix source table as postmap reads it: `key whitespace value`, # comments."""
    table: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, _, value = stripped.partition("\t") if "\t" in stripped else stripped.partition(" ")
        # postmap keeps the first of duplicate keys (and warns); lookups are case-folded.
        table.setdefault(key.lower(), value.strip())
    return table


@functools.cache
def access_maps_match_subdomains(fragment: Path = FRAGMENT) -> bool:
    """Whether `example.com` in an access map also matches sub.example.com on this product's
    Postfix: is `smtpd_access_maps` in parent_domain_matches_subdomains? The product sets that
    parameter in postfix-conf/main.cf.fragment; where the fragment does not, Postfix's default
    (which lists smtpd_access_maps) applies."""
    try:
        text = fragment.read_text(encoding="utf-8")
    except OSError:
        return True
    value: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():  # a continuation line of the parameter above
            if value is not None:
                value += " " + line.strip()
            continue
        if value is not None:
            break
        name, _, rest = line.partition("=")
        if name.strip() == "parent_domain_matches_subdomains":
            value = rest.strip()
    if value is None:
        return True
    return "smtpd_access_maps" in re.split(r"[\s,]+", value)


def _find(table: str, entries: dict[str, str], keys: list[str]) -> Lookup:
    for key in keys:
        if key in entries:
            return Lookup(table, tuple(keys), key, entries[key])
    return Lookup(table, tuple(keys))


def _parent_domains(domain: str, parent_style: bool) -> list[str]:
    """The parents check_mail_access tries after the domain itself: sub.example.com ->
    example.com, com (parent style) or .example.com, .com (dot style)."""
    labels = domain.split(".")
    prefix = "" if parent_style else "."
    return [prefix + ".".join(labels[i:]) for i in range(1, len(labels))]


def _maps_version(text: str) -> int | None:
    match = _VERSION_RE.search(text.split("\n", 1)[0])
    return int(match.group(1)) if match else None


def which_route(
    sender: str, recipient: str, maps_dir: Path, parent_style: bool | None = None
) -> RouteAnswer:
    """Answer from the map files in `maps_dir` (e.g. `<maps root>/live`). Raises RouteCheckError
    for bad input or when there are no maps."""
    files: dict[str, bytes] = {}
    for name in ("sender_access", "sender_relayhost", "tls_policy", "sasl_passwd"):
        try:
            files[name] = (maps_dir / name).read_bytes()
        except FileNotFoundError:
            continue
    return which_route_in(sender, recipient, files, parent_style)


def which_route_in(
    sender: str,
    recipient: str,
    files: Mapping[str, bytes] | None,
    parent_style: bool | None = None,
) -> RouteAnswer:
    """Answer from map file contents (`RenderedMaps.files`); None or no sender_access: no maps.
    `parent_style` overrides what the product's main.cf says about access map subdomains."""
    errors: dict[str, str] = {}
    sender_local = sender_domain = None
    bare_sender = _bare(sender)
    if bare_sender:
        try:
            sender_local, sender_domain = _address(bare_sender, Message("sender"))
        except ValueError as exc:
            errors["sender"] = message_of(exc)
    try:
        rcpt_local, rcpt_domain = _address(_bare(recipient), Message("recipient"))
    except ValueError as exc:
        errors["recipient"] = message_of(exc)
    if errors:
        raise RouteCheckError(errors)
    if not files or "sender_access" not in files:
        raise RouteCheckError(
            {
                "form": Message(
                    "No config version has been applied on this node yet: there are no maps."
                )
            }
        )
    if parent_style is None:
        parent_style = access_maps_match_subdomains()

    def table(name: str) -> dict[str, str]:
        return _parse_map(files.get(name, b"").decode("utf-8", "replace"))

    access = table("sender_access")
    relayhosts = table("sender_relayhost")
    policies = table("tls_policy")
    notes: list[str] = []

    address = ""
    parents: list[str] = []
    if sender_domain is None:
        access_keys = [NULL_SENDER_KEY]
        relay_keys = [NULL_SENDER_KEY]
        sasl_sender_keys: list[str] = []
        notes.append(
            Message(
                "The null sender <> is used only for bounces (delivery status notifications); "
                "Postfix looks it up as <> in the access and relay host maps."
            )
        )
    else:
        assert sender_local is not None
        address = f"{sender_local}@{sender_domain}"
        key = address.lower()
        parents = _parent_domains(sender_domain, parent_style)
        access_keys = [key, sender_domain, *parents, f"{sender_local.lower()}@"]
        relay_keys = [key, f"@{sender_domain}"]
        sasl_sender_keys = relay_keys
    access_lookup = _find("sender_access", access, access_keys)
    action = (access_lookup.value or "").split(" ", 1)[0].upper()
    # access(5): OK, or an all-numerical value, accepts. Anything else, or no match, is refused:
    # the product's smtpd_sender_restrictions end in a static 553 "Sender domain not allowed".
    allowed = action == "OK" or action.isdigit()
    verdict = REJECTED if sender_domain is not None else NULL_SENDER_REJECTED
    if allowed:
        verdict = ALLOWED
    if access_lookup.value is not None and not allowed:
        notes.append(
            Message(
                "sender_access answers {value!r} for {key}.",
                value=access_lookup.value,
                key=access_lookup.matched_key,
            )
        )
    via_parent = allowed and access_lookup.matched_key in parents
    if via_parent:
        notes.append(
            Message(
                "{domain} is not listed itself: the entry {key} for a parent domain admits it "
                "(parent_domain_matches_subdomains lists smtpd_access_maps).",
                domain=sender_domain,
                key=access_lookup.matched_key,
            )
        )
    if not allowed and sender_domain is not None and not parent_style:
        listed = next((p for p in _parent_domains(sender_domain, True) if p in access), None)
        if listed:
            notes.append(
                Message(
                    "{listed} is listed, but on this relay an entry admits only its own domain, "
                    "not subdomains: add {domain} as a sender domain of its own.",
                    listed=listed,
                    domain=sender_domain,
                )
            )

    relay_lookup = _find("sender_relayhost", relayhosts, relay_keys)
    relayhost = relay_lookup.value
    if relayhost is None and via_parent:
        notes.append(
            Message(
                "The relay host map has no parent-domain matching: mail from this sender goes "
                "directly to the recipient's MX, not through the parent domain's route."
            )
        )
    next_hop = relayhost or rcpt_domain
    tls_lookup = _find("tls_policy", policies, [next_hop.lower()])
    tls_mode = (tls_lookup.value or DEFAULT_TLS_LEVEL).split(" ", 1)[0]

    sasl_keys = list(sasl_sender_keys)
    if relayhost:
        host = relayhost.split("]", 1)[0].lstrip("[")
        sasl_keys += [host.lower(), relayhost.lower()]
    auth_user, sasl_lookup = _sasl_user(table("sasl_passwd"), sasl_keys)

    return RouteAnswer(
        sender=address,
        recipient=f"{rcpt_local}@{rcpt_domain}",
        sender_domain=sender_domain,
        recipient_domain=rcpt_domain,
        allowed=allowed,
        verdict=verdict,
        relayhost=relayhost,
        next_hop=next_hop,
        tls_mode=tls_mode,
        tls_from_policy=tls_lookup.value is not None,
        auth_user=auth_user,
        maps_version=_maps_version(files["sender_access"].decode("utf-8", "replace")),
        lookups=(access_lookup, relay_lookup, tls_lookup, sasl_lookup),
        notes=tuple(notes),
    )


def _sasl_user(entries: dict[str, str], keys: list[str]) -> tuple[str | None, Lookup]:
    """The SMTP AUTH user for the first matching key. The `user:password` value is split at
    once and the password dropped: it never leaves this function."""
    found = _find("sasl_passwd", entries, keys)
    if found.value is None:
        return None, found
    user = found.value.split(":", 1)[0]
    return user, Lookup(found.table, found.keys, found.matched_key, f"{user}:********")
