"""Ingestion of inbox files into the raw tables, with quarantine, suppression and a batch ledger.

One file is one batch, identified by the hash of its content: a file whose content was already ingested
is skipped, whatever its name. Every input row ends in exactly one of three places, and the
``ingest_batches`` ledger counts them: the raw table (loaded), ``quarantine`` (with a reason), or nowhere
because it belongs to an erased subject (suppressed). A file that lacks a required column is rejected
whole: its rows go to quarantine with that reason, and the run goes on with the next file.

The work happens inside DuckDB: the file is read as text, required values are checked and typed in SQL,
and only the per-file bookkeeping runs in Python.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from cdp.config import PURPOSES
from cdp.errors import SchemaError
from cdp.store import RAW_META, SOURCE_SPECS, SOURCES, SourceSpec, quarantine_reasons, raw_table, transaction
from cdp.suppression import SqlHasher, identifier_hash

READERS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "json", ".ndjson": "json", ".json": "json"}
CONSENT_STATUSES = ("granted", "withdrawn")
#: The quarantine reason of a row whose key another owner holds (``<key> already used by another <owner>``):
#: the row is not the key's owner's, so erasure and access do not take it for theirs by its key.
REUSED_KEY = "already used by another"


@dataclass
class BatchResult:
    """What happened to one inbox file; holds counts and names only, never row values."""

    source: str
    file: str
    batch_id: str
    status: str  # loaded | rejected | skipped | failed
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_suppressed: int = 0
    error: str | None = None
    #: Quarantined rows by reason (the reasons are fixed texts naming columns, never values), most first.
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_loaded + self.rows_quarantined + self.rows_suppressed

    def describe(self) -> str:
        """One line for the run's output: the file, its status and counts, and why rows were quarantined; for
        a file rejected whole, why (its ``error``), which is then the reason of every row; for a file not read,
        its ``error``."""
        if self.error and self.status == "failed":  # not read: nothing was counted
            return self.error
        if self.error:
            why = self.error.removeprefix(f"{self.file}: ")
            return (
                f"{self.file}: {self.status} ({why}), {self.rows_loaded} loaded, {self.rows_quarantined} "
                f"quarantined, {self.rows_suppressed} suppressed"
            )
        why = ", ".join(f"{n} {reason}" for reason, n in self.quarantine_reasons.items())
        return (
            f"{self.file}: {self.status}, {self.rows_loaded} loaded, {self.rows_quarantined} quarantined"
            f"{f' ({why})' if why else ''}, {self.rows_suppressed} suppressed"
        )


@dataclass
class IngestSummary:
    batches: list[BatchResult] = field(default_factory=list)

    def count(self, attr: str, status: str | None = None) -> int:
        return sum(getattr(b, attr) for b in self.batches if status is None or b.status == status)

    @property
    def new_files(self) -> list[BatchResult]:
        return [b for b in self.batches if b.status != "skipped"]

    @property
    def errors(self) -> list[str]:
        return [b.error for b in self.batches if b.error]


def _files(inbox: Path, source: str) -> list[Path]:
    folder = inbox / source
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def inbox_files(inbox: Path, source: str) -> list[Path]:
    """The export batches of ``inbox/<source>/``: CSV, Parquet and JSON Lines files, by their names. Hidden
    files are none: an upload in progress (``.x.csv.part``) or a macOS resource fork (``._x.csv``)."""
    return [p for p in _files(inbox, source) if p.suffix.lower() in READERS and not p.name.startswith(".")]


def unreadable_files(inbox: Path, source: str) -> list[Path]:
    """Files of ``inbox/<source>/`` that are no export batch by their names, hidden files aside: named in
    every run's summary, so that a file dropped as ``.txt`` is not ignored unseen."""
    return [p for p in _files(inbox, source) if p.suffix.lower() not in READERS and not p.name.startswith(".")]


def nested_folders(inbox: Path, source: str) -> list[Path]:
    """Folders inside ``inbox/<source>/`` (hidden ones aside): their files are never read, so every run's
    summary names them (a month's exports dropped as ``web/2026-11/`` would otherwise be lost unseen)."""
    folder = inbox / source
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


def foreign_folders(inbox: Path) -> list[Path]:
    """Sub-folders of ``inbox`` that are no source's (hidden ones aside): their files are never read."""
    return sorted(p for p in inbox.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in SOURCES)


def inbox_notices(inbox: Path) -> list[str]:
    """One line for each thing in the inbox folder itself that no run reads: a folder that is no source's, a file
    dropped beside the source folders instead of into one (hidden ones aside), no source folder at all; for an
    inbox that does not exist, that. What ``cdp run`` prints after its summary and a run started elsewhere (the
    Dagster UI, a schedule) logs as warnings."""
    if not inbox.is_dir():
        what = "a file, not an inbox folder" if inbox.exists() else "no such inbox folder"
        return [f"{inbox}: {what}; nothing was read"]
    sources = ", ".join(SOURCES)
    notes = [f"not a source folder {folder} (sources: {sources}); not read" for folder in foreign_folders(inbox)]
    notes += [
        f"not in a source folder {path}; not read (move it into the folder of its source: {sources})"
        for path in sorted(inbox.iterdir())
        if path.is_file() and not path.name.startswith(".")
    ]
    if not any((inbox / source).is_dir() for source in SOURCES):
        notes.append(f"no source folder in {inbox} ({sources}): nothing was read")
    return notes


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_PUNCTUATION = re.compile(r"[,;{}\[\]:\"]")


def line_values(line: str) -> set[str]:
    """Every value a malformed line may hold, for matching erased identifiers against it: its CSV fields (the
    line may hold quoted line breaks or CR/LF endings), the strings of a JSON line, complete or cut short,
    and the pieces between punctuation. Too many values is harmless (only identifiers of erased subjects
    are looked for among them); a value missed would let an erased identifier through."""
    values: set[str] = set()
    try:
        for row in csv.reader(io.StringIO(line)):
            values.update(row)
    except csv.Error:  # a quote left open: the pieces below still find its fields
        pass
    for quoted in _QUOTED.findall(line):
        try:
            values.add(json.loads(f'"{quoted}"'))
        except ValueError:
            values.add(quoted)
    values.update(_PUNCTUATION.split(line))
    return {v.strip() for v in values} - {""}


def text_values(text: str, regions: Iterable[str] = ("GB",)) -> set[str]:
    """Every value free text may hold an identifier as: :func:`line_values`, its words, the email addresses in
    it and the phone numbers phonenumbers finds in it read in each of ``regions`` ("referred by Ann,
    07911 123401"). For columns beyond the contract (kept in ``extra``), quarantined rows and malformed
    lines, where an erased subject's identifiers may sit inside a larger value."""
    from identity.standardise import ADDRESS_IN_TEXT

    values = line_values(text)
    values.update(text.split())
    values.update(ADDRESS_IN_TEXT.findall(text))
    if sum(ch.isdigit() for ch in text) >= 7:
        import phonenumbers

        for region in regions:
            for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE):
                values.add(match.raw_string)
    return {v.strip() for v in values} - {""}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(column: str, table: str = "") -> str:
    """SQL for the value of ``column`` (of ``table``, an alias with its dot) trimmed, NULL when empty."""
    return f"NULLIF(trim({table}{_q(column)}), '')"


_CSV_DIALECT = "header = true, delim = ',', quote = '\"', escape = '\"', encoding = 'utf-8'"
_CSV_REJECTS = "store_rejects = true, rejects_table = '_csv_errors', rejects_scan = '_csv_scans'"


def _read_as_text(con: duckdb.DuckDBPyConnection, path: Path, known: Collection[str] = ()) -> tuple[list[str], int]:
    """Load ``path`` into the temp table ``_batch`` (all VARCHAR, with ``_row``); returns columns, rejects.

    A column whose name, trimmed and lower-cased, is one of ``known`` (the source's contract columns) takes
    that name: ``CRM_ID`` and `` Email `` are ``crm_id`` and ``email`` (DuckDB's names ignore case, so they
    could not sit next to a ``crm_id`` added for a missing column anyway).

    Malformed lines are not lost: a CSV line with too many or too few fields, an unterminated quote or bad
    encoding, and a JSON Lines line that is not a JSON object, land in ``_rejects`` with their row number
    and become quarantine rows while the rest of the file loads. Only a file that cannot be read at all (no
    header, not Parquet, a ``.json`` document that does not parse) raises :class:`SchemaError`.
    """
    kind = READERS[path.suffix.lower()]
    con.execute("DROP TABLE IF EXISTS _batch; DROP TABLE IF EXISTS _rejects; DROP TABLE IF EXISTS _read")
    con.execute("CREATE TEMP TABLE _rejects (row_number BIGINT, reason VARCHAR, line VARCHAR)")
    try:
        if kind == "csv":
            with _as_utf8(path) as readable:
                _read_csv(con, readable)
        elif kind == "parquet":
            con.execute("CREATE TEMP TABLE _read AS SELECT * FROM read_parquet(?)", [str(path)])
        elif path.suffix.lower() == ".json":
            _read_json_document(con, path)
        else:
            _read_json_lines(con, path)
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise SchemaError(f"{path}: cannot be read as {kind}: {first}") from None
    described = con.execute("SELECT column_name, column_type FROM (DESCRIBE _read)").fetchall()
    canonical = {name.lower(): name for name in known}
    columns: list[str] = []
    for name, _type in described:
        alias = canonical.get(name.strip().lower(), name)
        alias = alias if alias.lower() not in {c.lower() for c in columns} else name
        columns.append(f"{alias}_in_file" if _INTERNAL_COLUMN.fullmatch(alias) else alias)
    casts = ", ".join(
        f"{_as_text(_q(name), kind)} AS {_q(alias)}" for (name, kind), alias in zip(described, columns, strict=True)
    )
    rejected = con.execute("SELECT count(*) FROM _rejects").fetchall()[0][0]
    if not rejected:
        con.execute(f"CREATE TEMP TABLE _batch AS SELECT {casts}, row_number() OVER () AS _row FROM _read")
    else:
        # Number good rows by their position in the file, skipping the numbers of rejected lines.
        con.execute(
            f"CREATE TEMP TABLE _batch AS WITH good AS (SELECT {casts}, row_number() OVER () AS _ord FROM _read), "
            "numbers AS (SELECT n AS _row, row_number() OVER (ORDER BY n) AS _ord FROM range(1, "
            "(SELECT count(*) FROM _read) + (SELECT count(*) FROM _rejects) + 1) r(n) "
            "WHERE n NOT IN (SELECT row_number FROM _rejects)) "
            "SELECT good.* EXCLUDE (_ord), numbers._row FROM good JOIN numbers USING (_ord)"
        )
    con.execute("DROP TABLE _read")
    return columns, int(rejected)


#: Columns ingestion adds to a batch, and the typed values of its insert (``_typed_0``, ...), whatever their case;
#: a file's own column of one of these names is read as ``<name>_in_file``.
_INTERNAL_COLUMN = re.compile(r"_(row|ord|fate|fate_reason|typed_[0-9]+)", re.IGNORECASE)


def _as_text(column: str, kind: str) -> str:
    """``column`` as text: nested values (JSON objects and arrays, Parquet structs and lists) as JSON. A JSON
    Lines key whose values are of several JSON types (``"event_id": 1001`` on one line, ``"e-1002"`` on the
    next) is read as type JSON: its strings are taken as their text, not as JSON with its quotes."""
    if kind == "JSON":
        nested_json = f"json_type({column}) IN ('OBJECT', 'ARRAY')"
        return f"CASE WHEN {nested_json} THEN CAST({column} AS VARCHAR) ELSE {column} ->> '$' END"
    nested = kind.startswith(("STRUCT", "MAP", "UNION")) or kind.endswith("]")
    return f"CAST(to_json({column}) AS VARCHAR)" if nested else f"CAST({column} AS VARCHAR)"


#: Byte-order marks of UTF-16, which spreadsheet programs write when asked for "Unicode text".
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@contextmanager
def _as_utf8(path: Path) -> Iterator[Path]:
    """``path`` itself, or for a file in UTF-16 (by its byte-order mark) a UTF-8 copy of it in a temporary file,
    removed on leaving: read as it is, its NUL bytes made every line one quarantined value. A copy rather than
    DuckDB's own UTF-16 reading, so that the paths for a file the sniffer gives up on read it too."""
    with path.open("rb") as fh:
        start = fh.read(2)
    if start not in _UTF16_BOMS:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="cdp-utf8-") as folder:
        copy = Path(folder) / path.name
        with (
            path.open("r", encoding="utf-16", errors="backslashreplace", newline="") as src,
            copy.open("w", encoding="utf-8", newline="") as out,
        ):
            shutil.copyfileobj(src, out, 1 << 20)
        yield copy


def _read_csv(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Temp table ``_read`` from a CSV file, malformed lines into ``_rejects``.

    DuckDB's sniffer gives up on a file whose lines it cannot agree on (an unterminated quote, line endings
    of two kinds); the file is then read again with the columns its header names, nothing detected and the
    parser's strict mode off, so that only the bad lines are rejected.
    """
    try:
        con.execute(
            f"CREATE TEMP TABLE _read AS SELECT * FROM read_csv(?, all_varchar = true, {_CSV_DIALECT}, {_CSV_REJECTS})",
            [str(path)],
        )
    except duckdb.InvalidInputException:
        con.execute("DROP TABLE IF EXISTS _csv_errors; DROP TABLE IF EXISTS _csv_scans")
        header = _csv_header(path)
        if not header:
            raise
        columns = "{" + ", ".join(f"'{name.replace(chr(39), chr(39) * 2)}': 'VARCHAR'" for name in header) + "}"
        con.execute(
            f"CREATE TEMP TABLE _read AS SELECT * FROM read_csv(?, auto_detect = false, columns = {columns}, "
            f"strict_mode = false, {_CSV_DIALECT}, {_CSV_REJECTS})",
            [str(path)],
        )
        spanning = " OR ".join(f"contains({_q(name)}, chr(10))" for name in header)
        if con.execute(f"SELECT count(*) FROM _read WHERE {spanning}").fetchall()[0][0]:
            con.execute("DROP TABLE _read; DROP TABLE IF EXISTS _csv_errors; DROP TABLE IF EXISTS _csv_scans")
            _read_csv_by_line(con, path, header)
            return
    # A quote left open at the start of a line, DuckDB reads without complaint: the lines up to the next quote
    # become one rejected "line", and the records on them are neither loaded nor counted.
    if con.execute("SELECT count(*) FROM _csv_errors WHERE contains(csv_line, chr(10))").fetchall()[0][0]:
        header = _csv_header(path)
        if header:
            con.execute("DROP TABLE _read; DROP TABLE IF EXISTS _csv_errors; DROP TABLE IF EXISTS _csv_scans")
            _read_csv_by_line(con, path, header)
            return
    con.execute(
        "INSERT INTO _rejects SELECT line - 1, 'malformed CSV line: ' || lower(min(error_type)), "
        "min(csv_line) FROM _csv_errors GROUP BY line"
    )
    _keep_undecodable_bytes(con, path)
    con.execute("DROP TABLE IF EXISTS _csv_errors; DROP TABLE IF EXISTS _csv_scans")


def _keep_undecodable_bytes(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Put back in ``_rejects`` the bytes of the lines DuckDB rejected as invalid encoding (it keeps ``?`` in
    their place): a line of a Latin-1 export is quarantined as it arrived, each byte that is not UTF-8 as a
    ``\\xNN`` escape (``j\\xf6rg``), so that nothing of it is lost. A line whose bytes at the position DuckDB
    gives do not spell its text is left as DuckDB wrote it."""
    found = con.execute(
        """SELECT e.line - 1, min(e.line_byte_position), min(r.line) FROM _csv_errors e
           JOIN _rejects r ON r.row_number = e.line - 1
           WHERE e.error_type = 'INVALID ENCODING' GROUP BY e.line"""
    ).fetchall()
    if not found:
        return
    with path.open("rb") as fh:
        for row_number, position, text in found:
            fh.seek(int(position) - 1)  # DuckDB counts a line's first byte from 1
            raw = fh.readline().rstrip(b"\r\n")
            read = text.encode()
            if len(raw) == len(read) and all(r == b or b == ord("?") for r, b in zip(raw, read, strict=True)):
                con.execute(
                    "UPDATE _rejects SET line = ? WHERE row_number = ?",
                    [raw.decode("utf-8", errors="backslashreplace"), row_number],
                )


def _read_csv_by_line(con: duckdb.DuckDBPyConnection, path: Path, header: list[str]) -> None:
    """Temp table ``_read`` from a CSV file one line per record, malformed lines into ``_rejects``.

    For a file the sniffer gave up on whose lenient read still holds a value spanning lines: a quote left
    open makes one value of every line up to the next quote, and the records on those lines would be
    neither loaded nor counted. In such a file a line break is a record's end; a line whose quotes do not
    close, or whose fields do not match the header, is quarantined, and the lines after it load.
    """
    import pandas as pd

    rows: list[list[str | None]] = []
    rejects: list[tuple[int, str, str]] = []
    number = 0
    for raw in path.read_bytes().splitlines()[1:]:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="backslashreplace")  # its bytes kept, as _keep_undecodable_bytes
            reason = "invalid unicode"
        else:
            reason = ""
        if not line.strip():
            continue
        number += 1
        if not reason:
            try:
                fields = next(csv.reader([line], strict=True))
            except csv.Error:
                reason = "unterminated quote" if line.count('"') % 2 else "quote in an unquoted field"
            else:
                if len(fields) != len(header):
                    reason = "missing columns" if len(fields) < len(header) else "too many columns"
        if reason:
            rejects.append((number, f"malformed CSV line: {reason}", line))
        else:
            rows.append([field if field != "" else None for field in fields])
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    con.register("_by_line", frame)
    try:
        con.execute("CREATE TEMP TABLE _read AS SELECT * FROM _by_line")
    finally:
        con.unregister("_by_line")
    if rejects:
        con.executemany("INSERT INTO _rejects VALUES (?, ?, ?)", rejects)


def _csv_header(path: Path) -> list[str]:
    """The column names of a CSV file's first line, made unique (``a``, ``a_1``); empty if it has none."""
    try:
        with path.open("rb") as fh:  # the first line only: a line further down in another encoding is not its
            line = fh.readline().decode("utf-8-sig")  # concern (decoding a whole buffer made the file unreadable)
        first = next(csv.reader([line]), [])
    except (UnicodeDecodeError, csv.Error):
        return []
    names: list[str] = []
    for raw in first:
        name = raw.strip() or f"column{len(names)}"
        while name in names:
            name = f"{name}_1"
        names.append(name)
    return names


def _holds_nothing(path: Path) -> bool:
    """``path`` is empty: no byte, or only a byte-order mark (UTF-8 or UTF-16) and white space, or an empty JSON
    array (an export of a day without rows that did not even write its header)."""
    size = path.stat().st_size
    if size == 0:
        return True
    if size > 64:
        return False
    data = path.read_bytes()
    text = data.decode("utf-16", errors="replace") if data[:2] in _UTF16_BOMS else data.decode("utf-8", "replace")
    return "".join(text.lstrip("\ufeff").split()) in ("", "[]")


def _read_json_document(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Temp table ``_read`` from a ``.json`` file: one document (an array of objects, or one object) or JSON
    Lines under that extension. Read whole when it parses; otherwise, unless it opens an array (one document
    that does not parse: the file is unreadable), as JSON Lines, so that a bad line costs that line only."""
    try:
        con.execute("CREATE TEMP TABLE _read AS SELECT * FROM read_json(?, format = 'auto')", [str(path)])
    except (duckdb.InvalidInputException, duckdb.BinderException):
        with path.open("rb") as fh:
            if fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
                raise
        _read_json_lines(con, path)


def _read_json_lines(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Temp table ``_read`` from a JSON Lines file, lines that are not JSON objects into ``_rejects``.

    Read whole by DuckDB when every line parses; otherwise line by line, numbering the non-blank lines as
    ``read_json`` numbers records, with one column per key any line holds (values as text). A byte-order mark
    (which DuckDB refuses) is dropped.
    """
    try:
        con.execute(
            "CREATE TEMP TABLE _read AS "
            "SELECT * FROM read_json(?, format = 'newline_delimited', records = true, union_by_name = true)",
            [str(path)],
        )
        return
    except (duckdb.InvalidInputException, duckdb.BinderException):  # a line that is not JSON, or not an object
        pass
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _lines AS
        SELECT row_number() OVER (ORDER BY n) AS row_number, line FROM (
            SELECT rtrim(unnest(lines), chr(13)) AS line, generate_subscripts(lines, 1) AS n
            FROM (SELECT string_split(ltrim(content, chr(65279)), chr(10)) AS lines FROM read_text(?))
        ) WHERE trim(line) <> ''
        """,
        [str(path)],
    )
    con.execute(
        """
        INSERT INTO _rejects
        SELECT row_number,
               'malformed JSON line: ' || CASE WHEN json_valid(line) THEN 'not an object' ELSE 'invalid JSON' END, line
        FROM _lines WHERE NOT json_valid(line) OR json_type(line) <> 'OBJECT'
        """
    )
    keys = [
        k
        for (k,) in con.execute(
            """
            SELECT key FROM (
                SELECT unnest(json_keys(line)) AS key, row_number AS first_row FROM _lines
                WHERE json_valid(line) AND json_type(line) = 'OBJECT')
            GROUP BY key ORDER BY min(first_row), key
            """
        ).fetchall()
    ]
    pointer = [("/" + k.replace("~", "~0").replace("/", "~1")) for k in keys]
    values = (
        ", ".join(f"json_extract_string(line, ${i + 1}) AS {_q(k)}" for i, k in enumerate(keys)) or "NULL AS column0"
    )
    con.execute(
        f"""
        CREATE TEMP TABLE _read AS SELECT {values} FROM _lines
        WHERE row_number NOT IN (SELECT row_number FROM _rejects) ORDER BY row_number
        """,
        pointer,
    )
    con.execute("DROP TABLE _lines")


def _sql_amount(col: str, kind: str) -> str:
    """SQL reading an amount as people and tills write it into ``kind``; NULL when it is not one (the text
    is then kept in ``extra``). Currency signs and codes and spaces go; ``(15.00)`` is -15.00; a comma is a
    thousands separator before groups of three digits with a point after them (``1,234.56``), a decimal
    comma otherwise (``12,50``, ``1.234,56``). Anything else left is not guessed at: ``1e3`` or ``12 50 x``."""
    bare = f"regexp_replace({col}, '^[A-Za-z]{{3}}|[A-Za-z]{{3}}$|[[:space:]£€$¥]', '', 'g')"
    t = f"(CASE WHEN {bare} LIKE '(%)' THEN '-' ELSE '' END || trim({bare}, '()'))"
    number = "-?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)"
    return (
        f"try_cast(CASE WHEN regexp_full_match({t}, '-?[0-9]{{1,3}}(,[0-9]{{3}})+(\\.[0-9]+)?') "
        f"THEN replace({t}, ',', '') "
        f"WHEN regexp_full_match({t}, '-?[0-9]{{1,3}}(\\.[0-9]{{3}})+,[0-9]+') "
        f"THEN replace(replace({t}, '.', ''), ',', '.') "
        f"WHEN regexp_full_match({t}, '-?[0-9]+,[0-9]{{1,2}}') THEN replace({t}, ',', '.') "
        f"WHEN regexp_full_match({t}, '{number}') THEN {t} END AS {kind})"
    )


def _typed(column: str, kind: str) -> str:
    """SQL parsing the text value of ``column`` into ``kind``; NULL when it does not parse."""
    col = _text(column)
    if kind == "TIMESTAMP":
        # A zone written as an abbreviation is a guess (BST is British Summer Time and Bangladesh Standard Time,
        # IST India, Israel or Ireland; DuckDB picks one): unparseable, unless UTC or GMT. Offsets and zone
        # names (Europe/London) are read.
        guessed = (
            f"regexp_matches({col}, '[0-9][[:space:]]*[A-Za-z]{{2,5}}$') "
            f"AND NOT regexp_matches({col}, '(?i)(UTC|GMT)$')"
        )
        # A space before a numeric offset (``2024-03-02 10:00:00 +0100``, as some systems log) is read too.
        offset = f"regexp_replace({col}, '([0-9])[[:space:]]+([+-][0-9]{{2}}(:?[0-9]{{2}})?)$', '\\1\\2')"
        spaced = f"CASE WHEN contains({col}, ' +') OR contains({col}, ' -') THEN {offset} ELSE {col} END"
        return f"CASE WHEN NOT ({guessed}) THEN CAST(try_cast({spaced} AS TIMESTAMPTZ) AS TIMESTAMP) END"
    if kind.startswith("DECIMAL"):
        return _sql_amount(col, kind)
    if kind in ("INTEGER", "BIGINT"):  # a whole number as written: try_cast rounds 2.5 to 3 and reads 1e3
        return f"CASE WHEN regexp_full_match({col}, '[+-]?[0-9]+(\\.0*)?') THEN try_cast({col} AS {kind}) END"
    if kind == "DATE":
        return f"try_cast({col} AS {kind})"
    return col


def _currency_of_amount(column: str) -> str:
    """SQL: the currency an amount as written names (``12,50 EUR``, ``£12.50``), for a row whose currency column
    is empty: a three-letter code before or after the number, or a sign of one currency only (``£``, ``€``).
    ``$`` and ``¥`` are signs of several: kept as written, they say the currency is not known (an order in
    it is one in another currency, not spend in the installation's). NULL when it names none."""
    col = f"trim({_q(column)})"
    return (
        f"CASE WHEN regexp_matches({col}, '^[A-Za-z]{{3}}[^A-Za-z]|[^A-Za-z][A-Za-z]{{3}}$') "
        f"THEN upper(regexp_extract({col}, '^([A-Za-z]{{3}})|([A-Za-z]{{3}})$', 0)) "
        f"WHEN contains({col}, '£') THEN 'GBP' WHEN contains({col}, '€') THEN 'EUR' "
        f"WHEN contains({col}, '$') THEN '$' WHEN contains({col}, '¥') THEN '¥' END"
    )


#: Suppression identifier type -> the source column it is derived from.
IDENTIFIER_COLUMNS = {
    "email_key": "email",
    "phone_e164": "phone",
    "user_id": "user_id",
    "loyalty_id": "loyalty_id",
    "crm_id": "crm_id",
    "device_id": "device_id",
    "anonymous_id": "anonymous_id",
}


#: Suppression type of an erased store receipt: a receipt carries no identifier when the customer gave none
#: (a name on the till at most), so a re-sent copy of it is known by its till's number alone. Keyed by store
#: and number, as ingestion tells receipts apart (two tills numbering alike are two receipts).
STORE_RECEIPT = "store_receipt"


def store_receipt_sql(store_id: str, transaction_id: str) -> str:
    """SQL for the suppression value of a store receipt (``STORE_RECEIPT``) from its raw columns."""
    return f"coalesce(trim({store_id}), '') || ':' || trim({transaction_id})"


def _phone_region_sql(spec: SourceSpec) -> str:
    """The region a row's national phone numbers are read in, as staging reads them (``''``: the default)."""
    from identity.staging import PHONE_REGIONS

    return PHONE_REGIONS.get(raw_table(spec.name), "''")


#: Identifier types whose suppression hashes were once taken of the value as written (trimmed), before their
#: matching rule changed: an erasure before loyalty card numbers were read in capitals hashed ``loy10042``
#: as such, and one before UUIDs were read in lower case hashed a device id as iOS writes it, in capitals.
#: The subject must stay out however the value is written now, so a value is also checked as written, and
#: a UUID in capitals too (:func:`_earlier_forms`).
_HASHED_AS_WRITTEN_BEFORE = ("user_id", "loyalty_id", "crm_id", "device_id", "anonymous_id")


def _earlier_forms(text: str) -> set[str]:
    """The forms an erasure of an earlier release may have hashed the id ``text`` in: as written (trimmed),
    and a UUID also in capitals (see :data:`_HASHED_AS_WRITTEN_BEFORE`)."""
    from identity.standardise import is_uuid

    written = text.strip()
    return {written, written.upper()} if is_uuid(written) else {written} if written else set()


def _identifier_sql(spec: SourceSpec) -> dict[str, list[str]]:
    """Normalised subject identifiers of a ``_batch`` row, in the forms suppression hashes are taken of (with
    those of :func:`_earlier_forms` for a type of :data:`_HASHED_AS_WRITTEN_BEFORE`)."""
    from identity.standardise import sql_email_match_key, sql_is_uuid, sql_normalise_id, sql_trim_id

    out: dict[str, list[str]] = {}
    for id_type, column in IDENTIFIER_COLUMNS.items():
        if column not in spec.columns:
            continue
        if id_type == "email_key":
            out[id_type] = [sql_email_match_key(_q(column))]
        elif id_type == "phone_e164":
            out[id_type] = ["_phone.e164"]
        else:
            normalised = sql_normalise_id(id_type, _q(column))
            out[id_type] = [normalised]
            if id_type in _HASHED_AS_WRITTEN_BEFORE:  # _earlier_forms; NULL, and not hashed, where it is normalised
                written = sql_trim_id(_q(column))
                out[id_type].append(f"NULLIF({written}, {normalised})")
                out[id_type].append(f"CASE WHEN {sql_is_uuid(written)} THEN NULLIF(upper({written}), {written}) END")
    if spec.name == "store":
        out[STORE_RECEIPT] = [store_receipt_sql(_q("store_id"), _q("transaction_id"))]
    return out


class Ingestor:
    """Ingests inbox files of every source into one DuckDB connection."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        secret: bytes,
        region: str = "GB",
        progress: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        self.con = con
        self.secret = secret
        self.hasher = SqlHasher(secret)
        self.region = region
        self.progress = progress or (lambda _msg: None)
        #: Where the lines of files rejected or not read go (``progress`` unless given: a run logs them as warnings).
        self.warn = warn or self.progress
        con.execute("SET TimeZone = 'UTC'")

    # -- public -------------------------------------------------------------------------------------------
    def ingest_inbox(self, inbox: Path, sources: Iterable[str] = SOURCES) -> IngestSummary:
        summary = IngestSummary()
        for source in sources:
            summary.batches.extend(self.ingest_source(inbox, source))
        return summary

    def ingest_source(self, inbox: Path, source: str) -> list[BatchResult]:
        """Ingest the files of ``inbox/<source>/`` not ingested yet; one progress line per new file and one for
        all the files skipped (a daily export's folder holds a year of them). A file rejected or not read, and
        what in the folder is no file to read, gets one line, with why, through ``warn``."""
        results = []
        paths = inbox_files(inbox, source)
        ingested = self._ingested_already(source, paths)
        for path in paths:
            if path in ingested:
                results.append(self._skipped(source, path, ingested[path]))
                continue
            result = self.ingest_file(source, path)
            if result.status != "skipped":
                (self.warn if result.error else self.progress)(result.describe())
            results.append(result)
        kinds = ", ".join(sorted(READERS))
        # What is no file to read, named as the files ingested are: by its place in the inbox (``store/x.txt``).
        nested = f"a folder inside a source folder; its files are not read (put them in {source}/)"
        strays = [(f"{source}/{p.name}", f"not an export batch by its name ({kinds}); not ingested")
                  for p in unreadable_files(inbox, source)]  # fmt: skip
        strays += [(f"{source}/{p.name}/", nested) for p in nested_folders(inbox, source)]
        for label, why in strays:
            error = f"{label}: {why}"
            results.append(BatchResult(source, label, "", "failed", error=error))
            self.warn(error)
        skipped = sum(r.status == "skipped" for r in results)
        if skipped:
            self.progress(f"{source}: {skipped} file{'s' if skipped > 1 else ''} already ingested, skipped")
        return results

    def _ingested_already(self, source: str, paths: list[Path]) -> dict[Path, str]:
        """The content hash of each of ``paths`` that is unchanged since it was hashed (see
        :meth:`_content_hash`) and whose content ``source`` has ingested: one query for a folder, not two per
        file (a year of daily exports is 365 files a source, every run)."""
        if not paths:
            return {}
        keys = {str(p.resolve()): p for p in paths}
        stats = [p.stat() for p in keys.values()]
        rows = self.con.execute(
            """SELECT h.path, h.content_hash
               FROM inbox_file_hashes h
               JOIN (SELECT unnest($path) AS path, unnest($size) AS size, unnest($inode) AS inode,
                            unnest($mtime) AS mtime_ns, unnest($ctime) AS ctime_ns) f
                 USING (path, size, inode, mtime_ns, ctime_ns)
               WHERE h.content_hash IN (SELECT content_hash FROM ingest_batches WHERE source = $source)""",
            {
                "path": list(keys), "size": [st.st_size for st in stats], "inode": [st.st_ino for st in stats],
                "mtime": [st.st_mtime_ns for st in stats], "ctime": [st.st_ctime_ns for st in stats],
                "source": source,
            },
        ).fetchall()  # fmt: skip
        return {keys[path]: str(digest) for path, digest in rows}

    @staticmethod
    def _batch_id(source: str, digest: str) -> str:
        # Of the source and the content: the same bytes in two sources (two empty files) are two batches.
        return hashlib.sha256(f"{source}:{digest}".encode()).hexdigest()[:20]

    def _skipped(self, source: str, path: Path, digest: str) -> BatchResult:
        return BatchResult(source, f"{source}/{path.name}", self._batch_id(source, digest), "skipped")

    def ingest_file(self, source: str, path: Path) -> BatchResult:
        spec = SOURCE_SPECS[source]
        digest = self._content_hash(path)
        batch_id = self._batch_id(source, digest)
        label = f"{source}/{path.name}"
        seen = self.con.execute(
            "SELECT count(*) FROM ingest_batches WHERE source = ? AND content_hash = ?", [source, digest]
        ).fetchall()[0][0]
        if seen:
            return self._skipped(source, path, digest)
        if _holds_nothing(path):  # a day without rows, exported as an empty file: an empty batch, not a rejection
            result = BatchResult(source, label, batch_id, "loaded")
            self.con.execute(
                "INSERT INTO ingest_batches VALUES (?, ?, ?, ?, 0, 0, 0, 0, 'loaded', NULL, now()::TIMESTAMP)",
                [batch_id, source, label, digest],
            )
            return result
        try:  # read before the transaction: a reader that fails and tries again must not abort it
            columns, malformed = _read_as_text(self.con, path, spec.columns)
        except SchemaError as exc:
            # Unreadable file: recorded as failed (not hashed as ingested, so a fixed file is retried).
            why = str(exc).removeprefix(f"{path}: ")  # named by its place in the inbox, as every file is
            return BatchResult(
                source, label, batch_id, "failed", error=f"{label}: {why} (not ingested; tried again next run)"
            )
        try:
            with transaction(self.con):
                result = self._load(spec, label, batch_id, columns, malformed)
                self.con.execute(
                    "INSERT INTO ingest_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                    [
                        batch_id, source, label, digest, result.rows_in, result.rows_loaded,
                        result.rows_quarantined, result.rows_suppressed, result.status, result.error,
                    ],
                )  # fmt: skip
        finally:
            self.con.execute("DROP TABLE IF EXISTS _batch; DROP TABLE IF EXISTS _rejects")
            self.con.execute(
                "DROP TABLE IF EXISTS _phone; DROP TABLE IF EXISTS _classified; DROP TABLE IF EXISTS _erased_extra; "
                "DROP TABLE IF EXISTS _suppressed; DROP TABLE IF EXISTS _redacted; DROP TABLE IF EXISTS _unreadable"
            )
        return result

    def _content_hash(self, path: Path) -> str:
        """:func:`content_hash` of ``path``, read again only when the file's size, inode or change times differ
        from when it was last hashed, as git's index does: a year of daily exports is not reread every run.
        The file is looked at before it is read, so one that changes while it is read is read again next time."""
        st = path.stat()
        key = str(path.resolve())
        version = [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
        known = self.con.execute(
            "SELECT content_hash FROM inbox_file_hashes "
            "WHERE path = ? AND size = ? AND inode = ? AND mtime_ns = ? AND ctime_ns = ?",
            [key, *version],
        ).fetchall()
        if known:
            return str(known[0][0])
        digest = content_hash(path)
        self.con.execute("INSERT OR REPLACE INTO inbox_file_hashes VALUES (?, ?, ?, ?, ?, ?)", [key, *version, digest])
        return digest

    # -- one file -----------------------------------------------------------------------------------------
    def _load(self, spec: SourceSpec, label: str, batch_id: str, columns: list[str], malformed: int) -> BatchResult:
        """Rows of ``_batch`` (read by :func:`_read_as_text`) into the raw table, quarantine and ledger."""
        rows_in = self.con.execute("SELECT count(*) FROM _batch").fetchall()[0][0] + malformed
        result = BatchResult(spec.name, label, batch_id, "loaded", rows_in=rows_in)
        malformed_suppressed = self._quarantine_rejects(spec.name, label, batch_id)

        # Absent optional columns read as NULL; columns beyond the contract are kept in ``extra``.
        for col in spec.columns:
            if col not in columns:
                self.con.execute(f"ALTER TABLE _batch ADD COLUMN {_q(col)} VARCHAR")
        extras = [c for c in columns if c not in spec.columns]
        missing = [c for c in spec.required if c not in columns]
        if missing:
            # Rejected whole: every row is quarantined with the reason (or suppressed), none is loaded.
            result.status = "rejected"
            result.error = f"{label}: missing required column '{missing[0]}'" + (
                f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""
            )
            if len(columns) == 1 and any(sep in columns[0] for sep in ";\t|"):
                result.error += "; its header is one column: columns must be separated by commas"
            self._classify(spec, extras, forced_reason=f"file rejected: missing required column {missing[0]}")
        else:
            self._classify(spec, extras)
        counts = dict(self.con.execute("SELECT _fate, count(*) FROM _classified GROUP BY 1").fetchall())

        if not missing:
            self._insert_loaded(spec, batch_id, label, extras)
        self.con.execute(
            f"INSERT INTO quarantine SELECT ?, ?, ?, _row, _fate_reason, {_row_json(columns)}, "
            "now()::TIMESTAMP FROM _classified WHERE _fate = 'quarantined'",
            [batch_id, spec.name, label],
        )
        result.rows_loaded = counts.get("loaded", 0)
        result.rows_quarantined = counts.get("quarantined", 0) + malformed - malformed_suppressed
        result.rows_suppressed = counts.get("suppressed", 0) + malformed_suppressed
        if result.rows_quarantined:
            result.quarantine_reasons = quarantine_reasons(self.con, [batch_id])
        return result

    def _insert_loaded(self, spec: SourceSpec, batch_id: str, label: str, extras: list[str]) -> None:
        # Each typed column is parsed once, in a sub-select (``_typed_<i>``), and read from there: written out
        # three times (the value, whether it parsed, and the text kept when it did not), an amount's parse made
        # the statement DuckDB plans several times larger.
        typed_columns = [(c, k) for c, k in spec.columns.items() if k != "VARCHAR"]
        parsed = {c: f"_typed_{i}" for i, (c, _k) in enumerate(typed_columns)}
        parses = "".join(f", {_typed(c, k)} AS {parsed[c]}" for c, k in typed_columns)
        typed_sql = {c: parsed[c] if c in parsed else _text(c) for c in spec.columns}
        amounts = [c for c, k in spec.columns.items() if k.startswith("DECIMAL")]
        if "currency" in spec.columns and amounts:  # an empty currency takes the one its amount names
            named = _currency_of_amount(amounts[0])
            typed_sql["currency"] = (
                f"coalesce({typed_sql['currency']}, CASE WHEN {typed_sql[amounts[0]]} IS NOT NULL THEN {named} END)"
            )
        typed = ", ".join(f"{sql} AS {_q(c)}" for c, sql in typed_sql.items())
        # Values of typed optional columns that do not parse are kept in ``extra``, as are extra columns.
        unparsed = [f"'_unparsed_{c}', CASE WHEN {parsed[c]} IS NULL THEN {_text(c)} END" for c, _k in typed_columns]
        any_unparsed = (
            " OR ".join(f"({parsed[c]} IS NULL AND {_text(c)} IS NOT NULL)" for c, _k in typed_columns) or "false"
        )
        # A value carrying an erased subject (``_erased_extra``) is left out; the row is someone else's.
        kept = {
            c: f"CASE WHEN {_q(c)} NOT IN (SELECT value FROM _erased_extra WHERE col = {_json_key(c)}) THEN {_q(c)} END"
            for c in extras
        }
        extra_pairs = [f"{_json_key(c)}, {kept[c]}" for c in extras] + unparsed
        # merge_patch onto an empty object drops the null-valued keys (RFC 7386); no key left, no extra.
        extra_json = f"NULLIF(json_merge_patch('{{}}', json_object({', '.join(extra_pairs)})), '{{}}')"
        if extras:
            extra_sql = extra_json
        elif unparsed:
            extra_sql = f"CASE WHEN {any_unparsed} THEN {extra_json} END"
        else:
            extra_sql = "NULL"
        meta = ", ".join(RAW_META)
        self.con.execute(
            f"INSERT INTO {raw_table(spec.name)} ({', '.join(map(_q, spec.columns))}, {meta}) "
            f"SELECT {typed}, ?, ?, _row, {extra_sql} FROM (SELECT *{parses} FROM _classified WHERE _fate = 'loaded')",
            [batch_id, label],
        )

    def _classify(self, spec: SourceSpec, extras: list[str], forced_reason: str | None = None) -> None:
        """Create ``_classified``: ``_batch`` plus ``_fate`` (loaded, quarantined, suppressed) and a reason.

        Suppression comes first: a row of an erased subject is kept nowhere, not even in quarantine. A row that
        would be quarantined is suppressed too when a value of a column beyond the contract (``extras``) carries
        an erased identifier (:meth:`_note_erased_extras`); a loaded row keeps the row without that value.
        ``forced_reason`` quarantines every row that is not suppressed (a file rejected whole). An email field
        naming several addresses (``a@x.com, b@y.org``, a JSON list) is no one address: its row is quarantined,
        or suppressed if any of them is an erased subject's.
        """
        from identity.standardise import email_functions

        with email_functions(self.con):  # emails beyond ASCII are read by the Python rule, as erasure read them
            self._classify_rows(spec, extras, forced_reason)

    def _classify_rows(self, spec: SourceSpec, extras: list[str], forced_reason: str | None) -> None:
        from identity.standardise import sql_email_count

        carried = self._note_erased_extras(extras)
        several = f"coalesce({sql_email_count('email')}, 0) > 1"
        erased_address = self._note_erased_values("email", several) if "email" in spec.columns else "false"
        # First: a shared withdrawal loses the erased values here, before its identifiers are judged readable.
        suppressed = self._note_suppressed(spec, erased_address)
        reasons: list[str] = [f"WHEN true THEN {_json_key(forced_reason)}"] if forced_reason else []
        for col in spec.required:
            kind = spec.columns[col]
            reasons.append(f"WHEN {_text(col)} IS NULL THEN 'empty required value: {col}'")
            if kind != "VARCHAR":
                reasons.append(f"WHEN {_typed(col, kind)} IS NULL THEN 'unparseable {col}'")
        if spec.name == "consent":
            purposes = ", ".join(f"'{p}'" for p in PURPOSES)
            statuses = ", ".join(f"'{s}'" for s in CONSENT_STATUSES)
            ids = " AND ".join(f"{_text(c)} IS NULL" for c in CONSENT_SUBJECT_COLUMNS)
            reasons += [
                f"WHEN lower(trim(purpose)) NOT IN ({purposes}) THEN 'unknown purpose'",
                f"WHEN lower(trim(status)) NOT IN ({statuses}) THEN 'unknown status'",
                f"WHEN {ids} THEN 'no subject identifier'",
            ]
        if "email" in spec.columns:
            reasons.append(f"WHEN {several} THEN 'email names several addresses'")
        if spec.name == "consent":
            reasons.append(f"WHEN {self._note_unreadable_subjects(spec)} THEN 'no readable subject identifier'")
        if spec.owner and not forced_reason:
            # An erased subject's row holds no key: another store's receipt of the same number loads.
            loadable = f"NOT ({suppressed})" + (f" AND (CASE {' '.join(reasons)} END) IS NULL" if reasons else "")
            reused = self._note_reused_keys(spec, spec.owner, loadable)
            reasons.append(f"WHEN {reused} THEN '{spec.key} {REUSED_KEY} {spec.owner}'")
        reason_sql = "CASE " + " ".join(reasons) + " END"
        quarantined = f"({reason_sql}) IS NOT NULL"
        self.con.execute(
            f"CREATE TEMP TABLE _classified AS SELECT _batch.*, "
            f"CASE WHEN {suppressed} OR ({quarantined} AND ({carried})) THEN 'suppressed' "
            f"WHEN {quarantined} THEN 'quarantined' "
            f"ELSE 'loaded' END AS _fate, {reason_sql} AS _fate_reason FROM _batch"
        )

    def _note_unreadable_subjects(self, spec: SourceSpec) -> str:
        """Fill ``_unreadable(_row)`` with the consent rows of ``_batch`` whose only identifiers are an email and
        a phone that do not read as one (``none``, ``n/a``), so that the event could never reach anyone: a
        withdrawal loaded so was silently of no effect. A withdrawal's email that reaches customers loosely
        (``ptaylor@@virginmedia.com``, see :mod:`consent.state`) counts as read, and so does a phone of seven
        digits or more without being read here: reading every phone-only event's number (staging reads each
        spelling once, into ``phone_map``) took 16 s of the 1M bench's 200k consent rows. Returns SQL true for
        such a row."""
        from consent.state import loose_email
        from identity.standardise import normalise_phone, sql_normalise_email

        others = " AND ".join(f"{_text(c)} IS NULL" for c in CONSENT_SUBJECT_COLUMNS if c not in ("email", "phone"))
        unread_email = (
            f"({_text('email')} IS NULL OR ({sql_normalise_email('email')} IS NULL "
            f"AND (lower(trim(status)) <> 'withdrawn' OR {loose_email('email')} IS NULL)))"
        )
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE _unreadable AS SELECT _row, phone, {_phone_region_sql(spec)} AS region "
            f"FROM _batch WHERE {others} AND {unread_email} "
            "AND length(regexp_replace(coalesce(phone, ''), '[^0-9]', '', 'g')) < 7"
        )
        phones = self.con.execute(
            f"SELECT DISTINCT phone, region FROM _unreadable WHERE {_text('phone')} IS NOT NULL"
        ).fetchall()
        read = [(p, r) for p, r in phones if normalise_phone(p, r or self.region)]
        if read:
            self.con.executemany("DELETE FROM _unreadable WHERE phone = ? AND region = ?", read)
        return "_row IN (SELECT _row FROM _unreadable)"

    def _note_suppressed(self, spec: SourceSpec, erased_address: str) -> str:
        """Fill ``_suppressed(_row)`` with the rows of ``_batch`` carrying an erased subject's identifier (or,
        ``erased_address``, SQL over ``_batch``, naming their address among others); returns SQL that is true
        for such a row.

        A consent withdrawal that also names someone else (the erased subject's recycled phone, and the new
        holder's email) is not suppressed: the erased values are removed from it, as erasure does to such an
        event already in the ledger, and it loads. Suppressed whole, it took the other person's withdrawal
        with it. A grant stays suppressed: no event, no consent."""
        if not self._has_suppressions:
            return "false"
        checks, params = self._suppressed_sql(spec)
        if "email" in spec.columns:
            checks["email_key"] = f"({checks['email_key']} OR {erased_address})"
        join_phone = (
            f"LEFT JOIN _phone ON _phone.raw = _batch.phone AND _phone.region = {_phone_region_sql(spec)}"
            if "phone" in spec.columns
            else ""
        )
        flags = ", ".join(f"{sql} AS {_q(t)}" for t, sql in checks.items())
        self.con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _suppressed AS
                SELECT * FROM (SELECT _row, {flags} FROM _batch {join_phone})
                WHERE {" OR ".join(map(_q, checks))}""",
            params,
        )
        if spec.name == "consent":
            self._redact_shared_withdrawals(checks)
        return "_row IN (SELECT _row FROM _suppressed)"

    def _redact_shared_withdrawals(self, checks: dict[str, str]) -> None:
        """Take out of ``_suppressed`` the withdrawals that also name an identifier no erased subject holds, with
        the erased values removed from them in ``_batch`` (see :meth:`_note_suppressed`)."""
        erased = {IDENTIFIER_COLUMNS[t]: t for t in checks if t in IDENTIFIER_COLUMNS}
        another = " OR ".join(
            f"({_text(c, 'b.')} IS NOT NULL AND NOT coalesce(s.{_q(erased[c])}, false))"
            if c in erased
            else f"{_text(c, 'b.')} IS NOT NULL"
            for c in CONSENT_SUBJECT_COLUMNS
        )
        self.con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _redacted AS
                SELECT s.* FROM _suppressed s JOIN _batch b USING (_row)
                WHERE lower(trim(b.status)) = 'withdrawn' AND ({another})"""
        )
        for column, id_type in erased.items():
            self.con.execute(
                f"UPDATE _batch SET {_q(column)} = NULL WHERE _row IN (SELECT _row FROM _redacted WHERE {_q(id_type)})"
            )
        self.con.execute("DELETE FROM _suppressed WHERE _row IN (SELECT _row FROM _redacted)")

    def _note_reused_keys(self, spec: SourceSpec, owner: str, loadable: str) -> str:
        """Fill ``_reused_keys(_row)`` with the rows of ``_batch`` whose key another ``owner`` holds (see
        :attr:`SourceSpec.owner`): the raw table's rows of that key, or else the file's first row of it that
        names an owner; returns SQL that is true for such a row. A row naming no owner is taken as a version;
        only rows that are otherwise ``loadable`` (SQL over ``_batch``) hold or take a key. Owners compare as
        staging reads ids: spaces aside, and a UUID whatever the case of its letters (a device id in capitals
        from iOS is the same device in lower case). A raw row naming no owner needs no filter of its own
        (``min`` passes it by): in the WHERE clause, DuckDB read every raw row's owner before their keys, 70 ms
        for the 109k receipts of the 1M bench against 15 ms."""
        from identity.standardise import sql_normalise_id

        key, held = _q(spec.key), sql_normalise_id(owner, _q(owner))
        self.con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _reused_keys AS
                WITH b AS (SELECT _row, {key} AS k, {held} AS o FROM _batch WHERE {held} IS NOT NULL AND {loadable}),
                known AS (SELECT {key} AS k, min({held}) AS known_owner FROM {raw_table(spec.name)}
                          WHERE {key} IN (SELECT k FROM b) GROUP BY ALL),
                first AS (SELECT k, arg_min(o, _row) AS first_owner FROM b GROUP BY ALL)
                SELECT b._row FROM b JOIN first USING (k) LEFT JOIN known USING (k)
                WHERE b.o <> coalesce(known_owner, first_owner)"""
        )
        return "_row IN (SELECT _row FROM _reused_keys)"

    def _note_erased_extras(self, extras: list[str]) -> str:
        """Fill ``_erased_extra(col, value)`` with the values of columns beyond the contract that carry an
        erased subject's identifier anywhere in them (a note "referred by Ann, 07911 123401", a nested JSON
        value, a row of a file rejected whole); returns SQL that is true for a ``_batch`` row holding one."""
        self.con.execute("CREATE OR REPLACE TEMP TABLE _erased_extra (col VARCHAR, value VARCHAR)")
        return " OR ".join([self._note_erased_values(col) for col in extras]) or "false"

    def _note_erased_values(self, col: str, where: str = "true") -> str:
        """Add to ``_erased_extra`` the values of ``_batch``'s column ``col`` (in rows where ``where``) that
        carry an erased subject's identifier anywhere in them, read as free text; returns SQL that is true
        for a row holding one."""
        if not self._suppression_hashes:
            return "false"
        values = self.con.execute(
            f"SELECT DISTINCT {_q(col)} FROM _batch WHERE {_q(col)} IS NOT NULL AND {where}"
        ).fetchall()
        hits = [(col, value) for (value,) in values if self._suppression_hashes & self._line_hashes(str(value))]
        if not hits:
            return "false"
        self.con.executemany("INSERT INTO _erased_extra VALUES (?, ?)", hits)
        return f"{_q(col)} IN (SELECT value FROM _erased_extra WHERE col = {_json_key(col)})"

    @functools.cached_property
    def _suppression_hashes(self) -> frozenset[str]:
        """The keyed hashes of erased subjects' identifiers, read once: nothing adds to them while files are
        ingested (erasure needs the store to itself)."""
        return frozenset(h for (h,) in self.con.execute("SELECT identifier_hash FROM suppression_list").fetchall())

    @property
    def _has_suppressions(self) -> bool:
        return bool(self._suppression_hashes)

    def _suppressed_sql(self, spec: SourceSpec) -> tuple[dict[str, str], list[object]]:
        """SQL per suppression type (and the parameters of them all, in order) that is true for rows carrying an
        identifier of an erased subject of that type; fills ``_phone`` with the batch's phones, read, for the
        join on ``_batch.phone`` it needs."""
        from identity.standardise import normalise_phone

        if "phone" in spec.columns:  # read as staging reads them: in the row's own country, if it has one
            phones = self.con.execute(
                f"SELECT DISTINCT phone, {_phone_region_sql(spec)} FROM _batch WHERE phone IS NOT NULL"
            ).fetchall()
            self.con.execute("CREATE TEMP TABLE _phone (raw VARCHAR, region VARCHAR, e164 VARCHAR)")
            if phones:
                self.con.executemany(
                    "INSERT INTO _phone VALUES (?, ?, ?)",
                    [(p, r, normalise_phone(p, r or self.region)) for p, r in phones],
                )
        checks: dict[str, str] = {}
        params: list[object] = []
        for id_type, forms in _identifier_sql(spec).items():
            found = []
            for expr in forms:
                hash_sql, hash_params = self.hasher.expr(expr, id_type)
                found.append(
                    f"({expr} IS NOT NULL AND {hash_sql} IN "
                    "(SELECT identifier_hash FROM suppression_list WHERE identifier_type = ?))"
                )
                params += [*hash_params, id_type]
            checks[id_type] = "(" + " OR ".join(found) + ")"
        return checks, params

    def _quarantine_rejects(self, source: str, label: str, batch_id: str) -> int:
        """Quarantine malformed CSV lines, except those of erased subjects; returns how many were suppressed.

        A malformed line has no reliable columns, so every field of it is tried as every identifier type.
        """
        suppressed = 0
        hashes = self._suppression_hashes
        if hashes:
            lines = self.con.execute("SELECT row_number, line FROM _rejects").fetchall()
            erased = [n for n, line in lines if hashes & self._line_hashes(line)]
            if erased:
                self.con.executemany("DELETE FROM _rejects WHERE row_number = ?", [(n,) for n in erased])
                suppressed = len(erased)
        self.con.execute(
            "INSERT INTO quarantine SELECT ?, ?, ?, row_number, reason, to_json(struct_pack(line := line)), "
            "now()::TIMESTAMP FROM _rejects",
            [batch_id, source, label],
        )
        return suppressed

    def _line_hashes(self, line: str) -> set[str]:
        """Suppression hashes of every identifier any value of ``line`` reads as (the line's columns are not
        trusted), with the forms of :data:`_HASHED_AS_WRITTEN_BEFORE`."""
        from identity.standardise import identifier_readings, phone_regions

        hashes = set()
        values = text_values(line, phone_regions(line_values(line), self.region))
        regions = phone_regions(values, self.region)
        for value in values:
            readings = identifier_readings(value, regions, IDENTIFIER_COLUMNS)
            readings |= {(t, form) for t in _HASHED_AS_WRITTEN_BEFORE for form in _earlier_forms(value)}
            hashes |= {identifier_hash(self.secret, t, v) for t, v in readings}
        return hashes


#: The columns of a consent row that name its subject (an event naming none of them readably is quarantined).
CONSENT_SUBJECT_COLUMNS = ("email", "phone", "user_id", "crm_id", "loyalty_id", "device_id", "anonymous_id")


def _json_key(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def _row_json(columns: list[str]) -> str:
    """SQL for the row as it arrived (text values under their original column names), as JSON."""
    return f"to_json(struct_pack({', '.join(f'{_q(c)} := {_q(c)}' for c in columns)}))"
