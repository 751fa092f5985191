"""The server key: encrypts secrets the service must read back (webhook signing secrets).

API keys are hashed (they are only ever compared); a webhook secret has to be used to sign every
delivery, so it is stored encrypted with AES-256-GCM under a server key instead:

- ``CRM_SECRET_KEY`` (32 random bytes, base64) when set: required with an external database,
  where several machines must share it (``crm-service keys server-key`` prints a new one);
- otherwise, with the embedded database, ``CRM_DATA_DIR/secret.key`` (mode 0600), made on first
  use.

A database dump alone therefore does not reveal any secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crm_service.errors import ConfigError
from crm_service.platform.config import Settings

KEY_BYTES = 32
_NONCE_BYTES = 12


def new_key_text() -> str:
    """A fresh server key, as ``CRM_SECRET_KEY`` takes it."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def _decode(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{where} must hold {KEY_BYTES} random bytes in base64 "
                          "(make one with `crm-service keys server-key`)")
    return key


def server_key(settings: Settings) -> bytes:
    """The server key from ``CRM_SECRET_KEY`` or the embedded data directory."""
    text = settings.secret_key
    if text:
        return _decode(text, "CRM_SECRET_KEY")
    if not settings.embedded:
        raise ConfigError("CRM_SECRET_KEY is required with an external DATABASE_URL (every "
                          "API and worker process needs the same key); make one with "
                          "`crm-service keys server-key`")
    path = Path(settings.data_dir) / "secret.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _decode(path.read_text(), str(path))
    with os.fdopen(fd, "w") as fh:
        fh.write(new_key_text() + "\n")
    return _decode(path.read_text(), str(path))


def _subkey(key: bytes, purpose: str) -> bytes:
    """An independent key for one purpose, derived from the server key."""
    return hmac.new(key, b"crm-service:" + purpose.encode(), hashlib.sha256).digest()


def encrypt(key: bytes, plaintext: str, context: str) -> bytes:
    """Encrypt: nonce ‖ AES-GCM(plaintext), bound to ``context`` (associated data)."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    box = AESGCM(_subkey(key, "encrypt"))
    return nonce + box.encrypt(nonce, plaintext.encode(), context.encode())


def decrypt(key: bytes, blob: bytes, context: str) -> str:
    """The plaintext of :func:`encrypt`; ConfigError when the server key does not fit."""
    box = AESGCM(_subkey(key, "encrypt"))
    try:
        return box.decrypt(bytes(blob[:_NONCE_BYTES]), bytes(blob[_NONCE_BYTES:]),
                           context.encode()).decode()
    except InvalidTag:
        raise ConfigError("a stored secret cannot be decrypted with this server key "
                          "(was CRM_SECRET_KEY changed?)") from None


def keyed_hash(key: bytes, purpose: str, value: str) -> str:
    """HMAC-SHA256 of ``value`` under a purpose-bound subkey, hex (e.g. erased customer ids)."""
    return hmac.new(_subkey(key, purpose), value.encode(), hashlib.sha256).hexdigest()


def hmac_sql(key: bytes, purpose: str) -> tuple[bytes, bytes]:
    """Padded (inner, outer) keys, so SQL computes :func:`keyed_digest` without an extension.

    ``sha256(outer || sha256(inner || convert_to(value, 'UTF8')))`` is HMAC-SHA256 (RFC 2104).
    """
    k = _subkey(key, purpose).ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in k), bytes(b ^ 0x5C for b in k)


def keyed_digest(key: bytes, purpose: str, value: str) -> bytes:
    """HMAC-SHA256 of ``value`` under the purpose's subkey (raw bytes)."""
    return hmac.new(_subkey(key, purpose), value.encode(), hashlib.sha256).digest()
