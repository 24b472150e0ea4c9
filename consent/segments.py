"""Segments: YAML definitions marketers write, compiled to parameterised SQL over profile columns only.

A segment file (``<segments_dir>/<name>.yaml``, default ``data/segments``)::

    name: lapsed_big_spenders
    description: Spent over 100 in total but bought nothing in the last 90 days
    where:
      all:
        - total_spend > 100
        - any:
            - last_purchase_at < current_date - interval 90 day
            - last_purchase_at is null
    fields: [first_name, total_spend]        # extra export columns (optional)
    activations: [email_marketing]           # purposes the scheduled export sends it for (optional)

``where`` is one condition or a tree of ``all`` (and) / ``any`` (or) lists. Each condition is parsed with
sqlglot and must use only: the profile columns in :data:`identity.profiles.SEGMENT_COLUMNS`; literals
(passed as parameters, never spliced into SQL); comparisons, ``and``/``or``/``not``, ``in (...)``,
``between``, ``is [not] null``, ``like``/``ilike``, arithmetic, ``DATE`` and ``TIMESTAMP`` literals and
casts (:data:`_CASTS`); and the functions in :data:`FUNCTIONS`.
Anything else (other columns or functions, subqueries, several statements, placeholders) is refused with
one line naming the file, the condition and the offending part.

Segments run in a sandbox: an in-memory DuckDB connection with external access disabled and its
configuration locked, holding only the allow-listed profile columns. A condition that slipped past the
checks could still read no file, no other table and write nothing. The built-in ``all_customers`` selects
every profile.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import sqlglot
import yaml
from sqlglot import exp

from cdp.config import PURPOSES
from cdp.errors import CdpError
from cdp.store import table_exists
from identity.profiles import SEGMENT_COLUMNS

ALL_CUSTOMERS = "all_customers"

#: How many ``all``/``any`` groups (or lists) deep a ``where`` may go. Real segments need two or three;
#: a tree thousands deep would exhaust Python's stack in the compiler and the YAML writer.
MAX_NESTING = 20

#: Functions a condition may call (sqlglot expression types).
FUNCTIONS: dict[type[exp.Expression], str] = {
    exp.Lower: "lower",
    exp.Upper: "upper",
    exp.Length: "length",
    exp.Coalesce: "coalesce",
    exp.Abs: "abs",
    exp.ArrayContains: "list_contains",
    exp.CurrentDate: "current_date",
    exp.CurrentTimestamp: "current_timestamp",
    exp.DateDiff: "date_diff",
    exp.RegexpLike: "regexp_matches",  # RE2: linear time, no pattern can hang the sandbox
}
_OPERATORS: tuple[type[exp.Expression], ...] = (
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.And, exp.Or, exp.Not, exp.Paren, exp.In,
    exp.Between, exp.Is, exp.Like, exp.ILike, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg,
    exp.Boolean, exp.Null, exp.Literal, exp.Column, exp.Identifier, exp.Interval, exp.Var, exp.Cast,
    exp.DataType,
)  # fmt: skip
_CONDITIONS = (exp.Predicate, exp.Connector, exp.Not, exp.Paren, exp.Boolean, exp.ArrayContains)
_UNITS = {"DAY", "DAYS", "WEEK", "WEEKS", "MONTH", "MONTHS", "YEAR", "YEARS"}
#: Casts a condition may write. sqlglot reads DuckDB's ``TIMESTAMP`` (literal, ``CAST`` or ``::``) as
#: TIMESTAMPNTZ, the zone-less type profile times are held in (UTC); older sqlglot said TIMESTAMP. A zoned
#: TIMESTAMPTZ is refused on purpose: DuckDB compares it with a profile time only after reading that time
#: in the session's zone, a setting and not the data, and a time is best written as the profile holds it.
_CASTS = {exp.DataType.Type.DATE, exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPNTZ}
_ZONED = {exp.DataType.Type.TIMESTAMPTZ, exp.DataType.Type.TIMESTAMPLTZ}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class SegmentError(CdpError):
    """A segment definition that cannot be used as written."""


@dataclass(frozen=True)
class Segment:
    name: str
    description: str
    where: Any
    fields: tuple[str, ...] = ()
    activations: tuple[str, ...] = ()
    file: str = "(built-in)"

    def document(self) -> dict[str, Any]:
        """The segment as its YAML file holds it (:func:`parse_segment` reads it back)."""
        doc: dict[str, Any] = {"name": self.name, "description": self.description, "where": self.where}
        if self.fields:
            doc["fields"] = list(self.fields)
        if self.activations:
            doc["activations"] = list(self.activations)
        return doc


@dataclass(frozen=True)
class CompiledSegment:
    segment: Segment
    sql: str  # the WHERE clause, with $p1.. placeholders
    params: dict[str, Any] = field(default_factory=dict)

    def select_sql(self) -> str:
        cols = ", ".join(f'"{c}"' for c in ("customer_id", *self.segment.fields))
        return f"SELECT {cols} FROM profiles WHERE {self.sql} ORDER BY customer_id"


BUILT_IN = Segment(ALL_CUSTOMERS, "Every unified customer", where="true")


def where_text(where: object) -> str:
    """A segment's ``where`` tree as one line: ``(a AND (b OR c))``."""
    if isinstance(where, dict) and len(where) == 1:
        ((kind, items),) = where.items()
        if isinstance(items, list):
            joiner = " AND " if kind == "all" else " OR "
            return "(" + joiner.join(where_text(i) for i in items) + ")"
    return str(where).lower() if isinstance(where, bool) else str(where)


# -- loading -----------------------------------------------------------------------------------------


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors' aliases: a few hundred characters of nested aliases unfold into millions of
    conditions (every copy is compiled), a request that would hold the console for minutes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a segment", mark)
        return super().compose_node(parent, index)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def load_yaml(text: str) -> Any:
    """A segment document (or part of one) from YAML text; aliases are refused (:class:`_NoAliasLoader`)."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506  (a SafeLoader)
    except RecursionError:  # brackets thousands deep: no segment, and the loader's recursion runs out
        raise SegmentError(f"segment conditions are nested more than {MAX_NESTING} groups deep") from None


def _nesting(node: Any) -> int:
    """How many mappings and lists deep ``node`` goes (without recursion: ``node`` may be very deep)."""
    deepest, stack = 0, [(node, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def dump_yaml(doc: Any) -> str:
    """YAML text of a segment document, with every repeated part written out, never as an alias."""
    return yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=False)


def load_segment(path: Path) -> Segment:
    """Read and validate one segment file (it is compiled too, so a bad condition fails here)."""
    try:
        doc = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SegmentError(f"{path}: cannot read segment: {str(exc).splitlines()[0]}") from None
    return parse_segment(doc, str(path), default_name=path.stem, file=str(path))


def parse_segment(doc: Any, origin: str, default_name: str | None = None, file: str = "(draft)") -> Segment:
    """Validate and compile a segment document (what a segment file holds); errors start with ``origin``."""
    if not isinstance(doc, dict):
        raise SegmentError(f"{origin}: a segment is a mapping with name, description, where")
    unknown = sorted(set(doc) - {"name", "description", "where", "fields", "activations"})
    if unknown:
        raise SegmentError(f"{origin}: unknown key(s) {', '.join(unknown)}")
    name = doc.get("name", default_name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise SegmentError(f"{origin}: name must be lower-case letters, digits and _, got {name!r}")
    if "where" not in doc:
        raise SegmentError(f"{origin}: missing 'where' (use `where: true` for everyone)")
    if _nesting(doc["where"]) > 2 * MAX_NESTING:  # each group is a mapping holding a list
        raise SegmentError(f"{origin}: segment conditions are nested more than {MAX_NESTING} groups deep")
    fields = tuple(_str_list(origin, doc, "fields"))
    for f in fields:
        if f not in SEGMENT_COLUMNS:
            raise SegmentError(f"{origin}: field {f!r} is not a profile column; allowed: {_allowed()}")
    activations = tuple(_str_list(origin, doc, "activations"))
    for p in activations:
        if p not in PURPOSES:
            raise SegmentError(f"{origin}: activation purpose {p!r} unknown; expected one of {', '.join(PURPOSES)}")
    segment = Segment(
        name=name,
        description=str(doc.get("description") or ""),
        where=doc["where"],
        fields=fields,
        activations=activations,
        file=file,
    )
    try:
        compile_segment(segment)
    except RecursionError:
        raise SegmentError(f"{origin}: segment conditions are nested too deeply") from None
    return segment


def _str_list(origin: str, doc: dict[str, Any], key: str) -> list[str]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SegmentError(f"{origin}: {key} must be a list of names")
    return list(dict.fromkeys(value))


def load_segments(segments_dir: Path) -> dict[str, Segment | SegmentError]:
    """Every segment by name: the built-in, then ``*.yaml`` / ``*.yml`` files (invalid ones as errors).

    No file can take the built-in's place: one that names itself ``all_customers`` is refused on its own,
    listed under its file stem (its file name, when the stem is ``all_customers`` too), so a stray file does
    not stop every export of all customers.

    A file that cannot be read is listed under its file stem, its name being unknown. When another file defines a
    segment of that name, the name is refused, whichever file sorts first: the broken file may be that segment's
    new definition, and exporting the other one could reach people the new one leaves out.
    """
    found: dict[str, Segment | SegmentError] = {ALL_CUSTOMERS: BUILT_IN}
    unreadable: dict[str, SegmentError] = {}
    paths = sorted([*segments_dir.glob("*.yaml"), *segments_dir.glob("*.yml")]) if segments_dir.is_dir() else []
    for path in paths:
        key = path.name if path.stem == ALL_CUSTOMERS else path.stem
        try:
            seg = load_segment(path)
        except SegmentError as exc:
            unreadable[key] = exc
            other = found.get(key)
            found[key] = _also_defined(exc, other.file) if isinstance(other, Segment) else exc
            continue
        if seg.name == ALL_CUSTOMERS:
            found[key] = SegmentError(f"{path}: {ALL_CUSTOMERS} is built in; give this segment another name")
            continue
        if seg.name in unreadable:
            found[seg.name] = _also_defined(unreadable[seg.name], seg.file)
            continue
        if seg.name in found:
            found[seg.name] = SegmentError(f"{path}: segment name {seg.name!r} is defined twice")
            continue
        found[seg.name] = seg
    return found


def _also_defined(unreadable: SegmentError, other_file: str) -> SegmentError:
    return SegmentError(f"{unreadable} (and {other_file} defines a segment of that name: fix or remove one of them)")


def get_segment(segments_dir: Path, name: str) -> Segment:
    found = load_segments(segments_dir).get(name)
    if found is None:
        raise SegmentError(f"no segment named {name!r} in {segments_dir} (try `cdp segments list`)")
    if isinstance(found, SegmentError):
        raise found
    return found


# -- compiling ---------------------------------------------------------------------------------------


def compile_segment(segment: Segment) -> CompiledSegment:
    """The segment's ``where`` as one parameterised SQL predicate over the allow-listed columns."""
    counter = itertools.count(1)
    params: dict[str, Any] = {}
    leaves = itertools.count(1)
    tree = _compile_node(segment, segment.where, counter, params, leaves)
    return CompiledSegment(segment, tree.sql(dialect="duckdb", comments=False), params)


def _compile_node(seg: Segment, node: Any, counter: Any, params: dict[str, Any], leaves: Any) -> exp.Expr:
    if isinstance(node, dict):
        if len(node) != 1 or next(iter(node)) not in ("all", "any"):
            raise SegmentError(f"{seg.file}: a condition group is `all: [...]` or `any: [...]`")
        ((kind, items),) = node.items()
        if not isinstance(items, list) or not items:
            raise SegmentError(f"{seg.file}: `{kind}` needs a non-empty list of conditions")
        parts = [exp.Paren(this=_compile_node(seg, item, counter, params, leaves)) for item in items]
        return exp.and_(*parts) if kind == "all" else exp.or_(*parts)
    if isinstance(node, bool):
        return exp.Boolean(this=node)
    if isinstance(node, str):
        return _compile_condition(seg, next(leaves), node, counter, params)
    raise SegmentError(f"{seg.file}: a condition must be text, got {type(node).__name__}")


def _compile_condition(seg: Segment, n: int, text: str, counter: Any, params: dict[str, Any]) -> exp.Expression:
    where = f"{seg.file}: condition {n}"
    try:
        statements = [s for s in sqlglot.parse(text, read="duckdb") if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise SegmentError(f"{where}: not a valid condition ({str(exc).splitlines()[0][:80]})") from None
    if len(statements) != 1:
        raise SegmentError(f"{where}: one condition expected, found {len(statements)} statements")
    tree = statements[0]
    for node in tree.walk():
        _check_node(where, node)
    if not isinstance(tree, exp.Predicate | exp.Connector | exp.Not | exp.Paren | exp.Boolean | exp.ArrayContains):
        raise SegmentError(f"{where}: not a true/false condition ({tree.sql(dialect='duckdb')[:60]})")

    def parameterise(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Literal) and not isinstance(node.parent, exp.Interval):
            name = f"p{next(counter)}"
            params[name] = node.this if node.is_string else Decimal(node.this)
            return exp.Placeholder(this=name)
        return node

    return tree.transform(parameterise, copy=True)


def _check_node(where: str, node: exp.Expr) -> None:
    if isinstance(node, exp.Query | exp.Subquery | exp.Exists):
        raise SegmentError(f"{where}: subqueries are not allowed")
    if isinstance(node, exp.Column):
        if node.table or node.args.get("db") or node.args.get("catalog"):
            raise SegmentError(f"{where}: use bare profile column names, not {node.sql(dialect='duckdb')}")
        if node.name not in SEGMENT_COLUMNS:
            raise SegmentError(f"{where}: {node.name!r} is not a profile column; allowed: {_allowed()}")
        return
    if type(node) in FUNCTIONS:
        return
    if type(node) not in _OPERATORS:  # exact types: a subclass of an allowed node is not allowed
        if isinstance(node, exp.Func):
            name = str(node.this) if isinstance(node, exp.Anonymous) else node.sql_name()
            allowed = ", ".join(sorted(FUNCTIONS.values()))
            raise SegmentError(f"{where}: function {name.lower()} is not allowed; allowed: {allowed}")
        raise SegmentError(f"{where}: {type(node).__name__.lower()} is not allowed in a segment condition")
    if isinstance(node, exp.In) and (node.args.get("query") or node.args.get("unnest")):
        raise SegmentError(f"{where}: subqueries are not allowed")
    if isinstance(node, exp.Var) and node.name.upper() not in _UNITS:
        raise SegmentError(f"{where}: {node.name!r} is not a date unit (day, week, month, year)")
    if isinstance(node, exp.Literal) and isinstance(node.parent, exp.Interval) and not node.this.isdigit():
        raise SegmentError(f"{where}: an interval needs a whole number, got {node.this!r}")
    if isinstance(node, exp.DataType) and node.this in _ZONED:
        raise SegmentError(f"{where}: timestamps with a time zone are not allowed; profile times are UTC, "
                           "write TIMESTAMP '2026-01-01 09:00:00' in UTC")  # fmt: skip
    if isinstance(node, exp.DataType) and node.this not in _CASTS:
        raise SegmentError(f"{where}: only DATE and TIMESTAMP casts are allowed")


def _allowed() -> str:
    return ", ".join(SEGMENT_COLUMNS)


# -- running -----------------------------------------------------------------------------------------


def sandbox(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """An in-memory, locked-down connection in UTC holding only the allow-listed profile columns as ``profiles``."""
    if not table_exists(con, "customer_profiles"):
        raise CdpError("no customer profiles yet; run `cdp run --inbox DIR` first")
    cols = ", ".join(f'"{c}"' for c in SEGMENT_COLUMNS)
    profiles = con.sql(f"SELECT {cols} FROM customer_profiles").to_arrow_table()
    box = duckdb.connect(":memory:")
    # Profile times are UTC without a zone; current_timestamp, current_date and comparisons with them follow
    # the session's zone, which a fresh connection takes from the machine (cdp.store sets UTC on its own).
    box.execute("SET TimeZone = 'UTC'")
    box.execute("SET enable_external_access = false")
    box.execute("SET lock_configuration = true")
    box.register("profiles", profiles)
    return box


def select_segment(con: duckdb.DuckDBPyConnection, segment: Segment) -> pd.DataFrame:
    """Customers in the segment (before consent): ``customer_id`` and the segment's ``fields``."""
    compiled = compile_segment(segment)
    box = sandbox(con)
    try:
        return box.execute(compiled.select_sql(), compiled.params).df()
    except duckdb.Error as exc:
        # DuckDB's message may quote a customer's value (a failed cast names it, a marketer could filter to
        # one customer to read it): the kind of error is told, never its text.
        kind = type(exc).__name__.removesuffix("Exception").lower()
        culprit = _failing_condition(box, segment)
        raise SegmentError(f"{segment.file}: {culprit} cannot run on the data ({kind} error)") from None
    finally:
        box.close()


def _failing_condition(box: duckdb.DuckDBPyConnection, segment: Segment) -> str:
    """``condition N (its text)``: the first condition that fails when run on its own, numbered as the
    compiler's errors number them; ``segment`` when none does. Only a failed segment pays for this: one
    count per condition over the sandbox's profiles."""
    for n, text in enumerate(_conditions(segment.where), 1):
        alone = compile_segment(Segment(segment.name, segment.description, where=text, file=segment.file))
        try:
            box.execute(f"SELECT count(*) FROM profiles WHERE {alone.sql}", alone.params).fetchall()
        except duckdb.Error:
            shown = " ".join(text.split())  # a YAML block scalar may span lines; an error is one line
            return f"condition {n} ({shown if len(shown) <= 80 else shown[:77] + '...'})"
    return "segment"


def _conditions(where: Any) -> list[str]:
    """The text conditions of a ``where`` tree in the order :func:`compile_segment` numbers them."""
    if isinstance(where, dict):
        return [text for items in where.values() for item in items for text in _conditions(item)]
    return [where] if isinstance(where, str) else []


def segment_counts(
    con: duckdb.DuckDBPyConnection, segment: Segment, purposes: Iterable[str] = PURPOSES
) -> tuple[int, dict[str, dict[str, int]]]:
    """The segment's customers before consent and, per purpose, how many may be contacted and why the others
    may not (:func:`consent.enforce.exclusion_counts`, the decision exports take). Counts only."""
    from consent import enforce

    candidates = select_segment(con, segment)
    return len(candidates), {p: enforce.exclusion_counts(con, p, candidates) for p in purposes}
