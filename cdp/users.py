"""People who use the web console and API: users with a role, their passwords, API tokens and sessions.

Users live in a small SQLite file of their own, ``settings.home / "users.db"`` (created readable by its
owner only), not in the DuckDB store: they are staff, not customers, so they have no place in the
erasure map, and erasure rewrites the store file while the console is running. Nothing secret is kept in
clear: a password is stored as a salted ``scrypt`` hash, and an API token or session cookie as
``<id>.<secret>`` of which only the id and a salted PBKDF2 hash of the secret are stored. The secret of
a token is shown once, when it is made.

Roles (:data:`ROLES`): ``marketer`` (segments, previews, consented exports), ``privacy_officer``
(requests, erasure, access, restriction, customer view) and ``admin`` (everything).

>>> import tempfile, pathlib
>>> users = UserStore(pathlib.Path(tempfile.mkdtemp()) / "users.db")
>>> users.add("ann", "marketer", "correct horse battery")
>>> users.check_password("ann", "correct horse battery").role
'marketer'
>>> users.check_password("ann", "wrong") is None
True
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cdp.errors import CdpError

ROLES = ("marketer", "privacy_officer", "admin")

#: scrypt cost: 2**15 x 8 x 1 takes ~50-100 ms and 32 MiB here, the OWASP-recommended floor.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
#: Token and session secrets are 256 random bits: a salted PBKDF2 with few rounds is ample and fast.
TOKEN_ROUNDS = 10_000
SESSION_HOURS = 8
#: Sign-in attempts a name may fail within LOCKOUT_MINUTES before even the right password is refused.
MAX_FAILURES, LOCKOUT_MINUTES = 5, 15
#: The sign-in form takes passwords up to MAX_PASSWORD characters: a longer one could never be typed in.
MIN_PASSWORD, MAX_PASSWORD = 10, 200
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{1,39}$")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT, created_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS api_tokens (
        token_id TEXT PRIMARY KEY, name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        secret_hash TEXT NOT NULL, created_at TEXT NOT NULL, last_used_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        session_id TEXT PRIMARY KEY, name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        secret_hash TEXT NOT NULL, csrf_token TEXT NOT NULL, expires_at TEXT NOT NULL)""",
    # A failed sign-in is kept under a keyed hash of the name typed: that may be a password typed in the
    # wrong field, or a stranger's guess, and is not a user name to keep.
    "CREATE TABLE IF NOT EXISTS sign_in_failures (name_hash TEXT NOT NULL, at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS store_key (key BLOB NOT NULL)",
    "DROP TABLE IF EXISTS login_failures",  # the earlier release's, which held the names as typed
]


class UserError(CdpError):
    """A user, role, password or token that cannot be used as given."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def may(self, *roles: str) -> bool:
        """Whether this user holds one of ``roles`` (an admin holds every role)."""
        return self.role == "admin" or self.role in roles


@dataclass(frozen=True)
class Session:
    user: User
    session_id: str
    csrf_token: str


# -- hashing -------------------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    """``scrypt$N$r$p$<salt hex>$<hash hex>`` with a fresh 16-byte salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
            maxmem=64 * 1024 * 1024, dklen=len(digest) // 2,
        )  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def _hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, TOKEN_ROUNDS)
    return f"pbkdf2${TOKEN_ROUNDS}${salt.hex()}${digest.hex()}"


def _verify_secret(secret: str, stored: str) -> bool:
    try:
        kind, rounds, salt, digest = stored.split("$")
        got = hashlib.pbkdf2_hmac("sha256", secret.encode(), bytes.fromhex(salt), int(rounds))
    except (ValueError, TypeError):
        return False
    return kind == "pbkdf2" and hmac.compare_digest(got.hex(), digest)


# A hash to check against when the user does not exist, so that a wrong name costs as long as a wrong password.
_DUMMY_HASH = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${'00' * 16}${'00' * 32}"


def _check_length(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters; this one has {len(password)}")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _split(credential: str) -> tuple[str, str] | None:
    ident, sep, secret = credential.partition(".")
    if not sep or not ident or not secret or len(credential) > 200:
        return None
    return ident, secret


# -- the store -----------------------------------------------------------------------------------------
class UserStore:
    """Users, API tokens and console sessions in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        with self._db() as db:
            for ddl in _SCHEMA:
                db.execute(ddl)
            if db.execute("SELECT count(*) FROM store_key").fetchone()[0] == 0:
                db.execute("INSERT INTO store_key VALUES (?)", [os.urandom(32)])
            self._key: bytes = db.execute("SELECT key FROM store_key").fetchone()[0]

    @classmethod
    def for_home(cls, home: Path) -> UserStore:
        return cls(Path(home) / "users.db")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA secure_delete = ON")  # a deleted row (a failure, a session) is overwritten
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.close()

    # users
    def add(self, name: str, role: str, password: str | None = None) -> None:
        """Create a user; without a password the user can only use API tokens."""
        if not _NAME.match(name):
            raise UserError(
                f"user name {name!r}: 2-40 lower-case letters, digits, '.', '_' or '-', starting with a letter"
            )
        if role not in ROLES:
            raise UserError(f"role {role!r} unknown; expected one of {', '.join(ROLES)}")
        if password is not None:
            _check_length(password)
        stored = hash_password(password) if password is not None else None
        try:
            with self._db() as db:
                db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", [name, role, stored, _now().isoformat()])
        except sqlite3.IntegrityError:
            raise UserError(f"user {name!r} already exists") from None

    def set_password(self, name: str, password: str) -> None:
        _check_length(password)
        with self._db() as db:
            changed = db.execute("UPDATE users SET password_hash = ? WHERE name = ?", [hash_password(password), name])
            if not changed.rowcount:
                raise UserError(f"no user named {name!r}")
            db.execute("DELETE FROM sessions WHERE name = ?", [name])  # a new password ends every session

    def get(self, name: str) -> User | None:
        with self._db() as db:
            row = db.execute("SELECT name, role FROM users WHERE name = ?", [name]).fetchone()
        return User(row[0], row[1]) if row else None

    def list(self) -> list[tuple[str, str, str, int]]:
        """(name, role, created_at, tokens) of every user."""
        with self._db() as db:
            return db.execute(
                """SELECT u.name, u.role, u.created_at, count(t.token_id) FROM users u
                   LEFT JOIN api_tokens t USING (name) GROUP BY u.name ORDER BY u.name"""
            ).fetchall()

    def password_hash(self, name: str) -> str | None:
        """The stored hash (for tests and audits of the storage itself)."""
        with self._db() as db:
            row = db.execute("SELECT password_hash FROM users WHERE name = ?", [name]).fetchone()
        return row[0] if row else None

    def check_password(self, name: str, password: str) -> User | None:
        """The user when the password is right and the name is not locked out by recent failures.

        The attempt is recorded as a failure before the (slow) password check and cleared when it succeeds:
        attempts sent together each count those started before them, so a burst of guesses in parallel
        locks the name as surely as one after the other. An attempt while the name is locked is refused
        and not recorded, so the lock ends LOCKOUT_MINUTES after the failure that set it (see
        :meth:`locked_until`) however often the user tries again meanwhile."""
        key = self._failure_key(name)
        with self._db() as db:  # one transaction: the insert holds the write lock until the count is read
            since = self._forget_old_failures(db)
            tried = db.execute("SELECT count(*) FROM sign_in_failures WHERE name_hash = ? AND at > ?", [key, since])
            locked = tried.fetchone()[0] >= MAX_FAILURES
            if not locked:
                db.execute("INSERT INTO sign_in_failures VALUES (?, ?)", [key, _now().isoformat()])
            row = db.execute("SELECT name, role, password_hash FROM users WHERE name = ?", [name]).fetchone()
        stored = row[2] if row and row[2] else _DUMMY_HASH
        ok = verify_password(password, stored) and not locked  # checked even when locked: the same time taken
        if ok:
            with self._db() as db:
                db.execute("DELETE FROM sign_in_failures WHERE name_hash = ?", [key])
        return User(row[0], row[1]) if ok and row and row[2] else None

    def locked_until(self, name: str) -> datetime | None:
        """When sign-ins by ``name`` are taken again, if recent failures lock it now (any name typed may be
        locked, a user's or not: the answer tells nothing of who exists)."""
        key = self._failure_key(name)
        with self._db() as db:
            since = self._forget_old_failures(db)
            times = db.execute(
                "SELECT at FROM sign_in_failures WHERE name_hash = ? AND at > ? ORDER BY at DESC LIMIT ?",
                [key, since, MAX_FAILURES],
            ).fetchall()
        if len(times) < MAX_FAILURES:
            return None
        return datetime.fromisoformat(times[-1][0]) + timedelta(minutes=LOCKOUT_MINUTES)

    def _failure_key(self, name: str) -> str:
        """The name typed, as stored for counting failures: a slow keyed hash (scrypt, salted with the store's
        key), since the key sits in the same file and a fast one would let a copy of the file be searched for
        a password typed in the name field. Not remembered between calls: a memo would keep the names typed
        in memory and answer a name typed before sooner than a new one."""
        digest = hashlib.scrypt(name[:40].encode(), salt=self._key, n=2**14, r=8, p=1, maxmem=32 * 1024 * 1024)
        return digest.hex()

    @staticmethod
    def _forget_old_failures(db: sqlite3.Connection) -> str:
        """Delete the failures that no longer count; returns the time from which they do."""
        since = (_now() - timedelta(minutes=LOCKOUT_MINUTES)).isoformat()
        db.execute("DELETE FROM sign_in_failures WHERE at <= ?", [since])
        return since

    # API tokens
    def new_token(self, name: str) -> str:
        """A new API token for the user: ``cdp_<id>.<secret>``, returned once and stored only hashed."""
        if self.get(name) is None:
            raise UserError(f"no user named {name!r}; create it with `cdp users add {name} --role ROLE`")
        token_id, secret = f"cdp_{secrets.token_hex(8)}", secrets.token_urlsafe(32)
        with self._db() as db:
            db.execute(
                "INSERT INTO api_tokens VALUES (?, ?, ?, ?, NULL)",
                [token_id, name, _hash_secret(secret), _now().isoformat()],
            )
        return f"{token_id}.{secret}"

    def revoke_tokens(self, name: str) -> int:
        with self._db() as db:
            return db.execute("DELETE FROM api_tokens WHERE name = ?", [name]).rowcount

    def check_token(self, token: str) -> User | None:
        parts = _split(token)
        if parts is None:
            return None
        with self._db() as db:
            row = db.execute(
                """SELECT u.name, u.role, t.secret_hash FROM api_tokens t JOIN users u USING (name)
                   WHERE t.token_id = ?""",
                [parts[0]],
            ).fetchone()
            if row is None or not _verify_secret(parts[1], row[2]):
                return None
            db.execute("UPDATE api_tokens SET last_used_at = ? WHERE token_id = ?", [_now().isoformat(), parts[0]])
        return User(row[0], row[1])

    # sessions
    def new_session(self, user: User, hours: int = SESSION_HOURS) -> tuple[str, Session]:
        """Start a console session: returns the cookie value (shown to the browser only) and the session."""
        session_id, secret, csrf = secrets.token_hex(12), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = (_now() + timedelta(hours=hours)).isoformat()
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE expires_at < ?", [_now().isoformat()])
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                [session_id, user.name, _hash_secret(secret), csrf, expires],
            )
        return f"{session_id}.{secret}", Session(user, session_id, csrf)

    def check_session(self, cookie: str) -> Session | None:
        parts = _split(cookie)
        if parts is None:
            return None
        with self._db() as db:
            row = db.execute(
                """SELECT u.name, u.role, s.secret_hash, s.csrf_token, s.expires_at FROM sessions s
                   JOIN users u USING (name) WHERE s.session_id = ?""",
                [parts[0]],
            ).fetchone()
        if row is None or row[4] < _now().isoformat() or not _verify_secret(parts[1], row[2]):
            return None
        return Session(User(row[0], row[1]), parts[0], row[3])

    def end_session(self, session_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE session_id = ?", [session_id])
