"""Suppression of erased subjects: keyed hashes of their normalised identifiers, checked at ingestion.

The key is a per-installation secret (``<home>/secret.key``, created on first use, readable by its owner
only). Hashes are HMAC-SHA256, computed in DuckDB SQL so that ingestion can check millions of rows without
leaving the database; :func:`identifier_hash` is the same function in Python.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import duckdb

_BLOCK = 64  # SHA-256 block size in bytes


def load_secret(path: Path) -> bytes:
    """The installation's HMAC key, created (0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def identifier_hash(secret: bytes, identifier_type: str, value: str) -> str:
    """HMAC-SHA256 of ``type:value`` (value already normalised), as hex."""
    return hmac.new(secret, f"{identifier_type}:{value}".encode(), hashlib.sha256).hexdigest()


class SqlHasher:
    """Builds the SQL expression of :func:`identifier_hash` for a column, with the key as parameters."""

    def __init__(self, secret: bytes):
        key = secret if len(secret) <= _BLOCK else hashlib.sha256(secret).digest()
        key = key.ljust(_BLOCK, b"\0")
        self.inner = bytes(b ^ 0x36 for b in key)
        self.outer = bytes(b ^ 0x5C for b in key)

    def expr(self, value_sql: str, identifier_type: str) -> tuple[str, list[object]]:
        """SQL for the hash of ``value_sql`` and the parameters it binds (in order)."""
        sql = f"sha256(?::BLOB || unhex(sha256(?::BLOB || encode(? || {value_sql}))))"
        return sql, [self.outer, self.inner, f"{identifier_type}:"]


def suppressed_count(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM suppression_list").fetchall()[0][0])
