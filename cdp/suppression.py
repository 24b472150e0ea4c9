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

from cdp.errors import CdpError
from cdp.store import ensure_table, table_exists

_BLOCK = 64  # SHA-256 block size in bytes


def load_secret(path: Path) -> bytes:
    """The installation's HMAC key, created (0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


#: What a store records of its key: the HMAC of this label under the key (never the key itself).
_KEY_CHECK_LABEL = b"cdp suppression key check"


def store_secret(con: duckdb.DuckDBPyConnection, path: Path) -> bytes:
    """The installation's key, checked against the one this store's suppression list was made with.

    A key file that was lost or replaced is refused. Otherwise a new key is created that matches none of the
    suppressed identifiers' hashes, and the erased people's records are quietly ingested again. The register's
    subject hashes would stop matching too. The store keeps an HMAC of a fixed label under the key in
    ``suppression_key``; the first use of a key on a store records it there.
    """
    ensure_table(
        con, "CREATE TABLE IF NOT EXISTS suppression_key (check_value VARCHAR NOT NULL, recorded_at TIMESTAMP)"
    )
    recorded = [row[0] for row in con.execute("SELECT check_value FROM suppression_key").fetchall()]
    if not path.exists() and (recorded or _suppresses_anyone(con)):
        raise CdpError(
            f"{path}: the suppression key of this store is missing; restore it from a backup of {path.parent} "
            "(under a new key, erased people's records would be ingested again)"
        )
    secret = load_secret(path)
    check = hmac.new(secret, _KEY_CHECK_LABEL, hashlib.sha256).hexdigest()
    if not recorded:
        con.execute("INSERT INTO suppression_key VALUES (?, now())", [check])
    elif check not in recorded:
        raise CdpError(
            f"{path}: not the suppression key this store was made with; restore that key from a backup "
            "(under another key, erased people's records would be ingested again)"
        )
    return secret


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


def _suppresses_anyone(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store has a suppression list with anyone on it (a store from before keys were recorded)."""
    return table_exists(con, "suppression_list") and suppressed_count(con) > 0


def suppressed_count(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM suppression_list").fetchall()[0][0])
