"""Why two records are, or are not, one customer: the identifier path between them and Splink's view.

``explain_pair(con, (source, id), (source, id))`` finds both records' units and customers, the shortest
path of ``identity_edges`` joining the units (each step names its evidence: a key type and rule, or a
Splink match weight), and the model's per-comparison match weights for the two units when both bear
person attributes (optionally saving Splink's waterfall chart as HTML).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from cdp.errors import CdpError


@dataclass
class Explanation:
    unit_a: str
    unit_b: str
    customer_a: str
    customer_b: str
    path: list[dict[str, Any]] | None = None
    splink: dict[str, Any] | None = None
    chart: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def same_customer(self) -> bool:
        return self.customer_a == self.customer_b


def parse_ref(text: str) -> tuple[str, str]:
    """``"crm:C123"`` -> ``("crm", "C123")``: a record named by its source and source key."""
    source, sep, record_id = text.partition(":")
    if not sep or source not in ("web", "app", "store", "crm") or not record_id:
        raise CdpError(f"{text!r}: name a record as SOURCE:ID, with SOURCE one of web, app, store, crm")
    return source, record_id


def _locate(con: duckdb.DuckDBPyConnection, ref: tuple[str, str]) -> tuple[str, str]:
    rows = con.execute(
        "SELECT unit_id, customer_id FROM customer_source_records WHERE source = ? AND source_record_id = ?",
        list(ref),
    ).fetchall()
    if not rows:
        raise CdpError(f"{ref[0]}:{ref[1]}: no such record in customer_source_records")
    return rows[0][0], rows[0][1]


def shortest_path(con: duckdb.DuckDBPyConnection, customer_id: str, start: str, goal: str) -> list[dict[str, Any]]:
    """Breadth-first path over the edges among one customer's units; each step carries its evidence."""
    edges = con.execute(
        """
        SELECT e.unit_id_l, e.unit_id_r, e.evidence, e.rule, e.match_weight FROM identity_edges e
        WHERE e.unit_id_l IN (SELECT unit_id FROM customer_source_records WHERE customer_id = ?)
        """,
        [customer_id],
    ).fetchall()
    adjacent: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for left, right, evidence, rule, weight in edges:
        step = {"evidence": evidence, "rule": rule, "match_weight": weight}
        adjacent.setdefault(left, []).append((right, step))
        adjacent.setdefault(right, []).append((left, step))
    previous: dict[str, tuple[str, dict[str, Any]] | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for nxt, step in sorted(adjacent.get(node, []), key=lambda s: (s[1]["evidence"] == "splink", s[0])):
            if nxt not in previous:
                previous[nxt] = (node, step)
                queue.append(nxt)
    if goal not in previous:
        return []
    path: list[dict[str, Any]] = []
    node = goal
    while previous[node] is not None:
        parent, step = previous[node]  # type: ignore[misc]  # checked not None on the line above
        path.append({"from": parent, "to": node, **step})
        node = parent
    return list(reversed(path))


def _last_prior(con: duckdb.DuckDBPyConnection) -> float | None:
    """The prior the last resolution run measured, so that explain scores pairs as that run did."""
    from cdp.store import table_exists

    if not table_exists(con, "identity_runs"):
        return None
    rows = con.execute(
        "SELECT json_extract(stats, '$.model_prior')::DOUBLE FROM identity_runs ORDER BY finished_at DESC LIMIT 1"
    ).fetchall()
    return float(rows[0][0]) if rows and rows[0][0] else None


def explain_pair(
    con: duckdb.DuckDBPyConnection, a: tuple[str, str], b: tuple[str, str], chart_path: Path | None = None
) -> Explanation:
    from cdp.store import table_exists
    from identity.model import score_units

    if not table_exists(con, "customer_source_records"):
        raise CdpError("no customer_source_records yet; run `cdp run --inbox DIR` first")
    unit_a, customer_a = _locate(con, a)
    unit_b, customer_b = _locate(con, b)
    result = Explanation(unit_a, unit_b, customer_a, customer_b)
    if unit_a == unit_b:
        result.notes.append("both records belong to the same identity unit")
        result.path = []
    elif customer_a == customer_b:
        result.path = shortest_path(con, customer_a, unit_a, unit_b)
    result.splink = score_units(con, unit_a, unit_b, chart_path, prior=_last_prior(con)) if unit_a != unit_b else None
    if result.splink is None and unit_a != unit_b:
        result.notes.append("the model scores only units with a name (CRM contacts, named store receipts)")
    elif chart_path is not None:
        result.chart = chart_path
    if not result.same_customer:
        result.notes.extend(guard_notes(con, unit_a, unit_b))
    if result.splink is not None and not result.same_customer:
        result.notes.extend(crowd_notes(con, unit_a, unit_b))
    return result


def crowd_notes(con: duckdb.DuckDBPyConnection, unit_a: str, unit_b: str) -> list[str]:
    """One line per blocking rule whose key the two units share in a block the crowd guard skips: that rule
    never handed them to the model, whatever their score (see :func:`identity.model.mark_crowds`)."""
    from identity.model import PREDICTION_BLOCKING, block_keys, crowded_blocks, person_units_sql
    from identity.resolve import last_run_stats

    limit = last_run_stats(con).get("block_limit")
    if not limit:
        return []
    units = f"({person_units_sql('identity_units')})"
    rules = tuple(PREDICTION_BLOCKING)
    crowded = crowded_blocks(con, units, int(limit), rules)
    skipped: list[str] = []
    comparing: list[str] = []
    for k, key in enumerate(block_keys(rules)):
        if key is None:
            continue
        # The rule's key, when the two units share it (either way round: some rules are not symmetric).
        ways = [
            f"WHEN {key.present(0, x)} AND {key.present(1, y)} AND {key.sql(0, x)} = {key.sql(1, y)} "
            f"THEN {key.sql(0, x)}"
            for x, y in (("a", "b"), ("b", "a"))
        ]
        shared = con.execute(
            f"SELECT CASE {' '.join(ways)} END FROM {units} a, {units} b WHERE a.unit_id = ? AND b.unit_id = ?",
            [unit_a, unit_b],
        ).fetchall()
        if shared and shared[0][0] is not None:
            (skipped if (k, int(shared[0][0])) in crowded else comparing).append(str(k + 1))
    if not skipped:
        return []
    after = (
        f"rule {', '.join(comparing)} still compares them"
        if comparing
        else "no other rule compares them, so the model never scored this pair"
    )
    return [
        f"blocking rule {', '.join(skipped)} would compare them, but their block holds more than {int(limit):,} "
        f"units (setting max_units_per_block) and is skipped; {after}"
    ]


def guard_notes(con: duckdb.DuckDBPyConnection, unit_a: str, unit_b: str) -> list[str]:
    """Why two units of different customers were kept apart although evidence joins them: the identifier
    keys they share that the graph held back, the model's precision guards that hold for the pair, and a
    unit that matched two records disagreeing with each other (see :mod:`identity.graph`, :mod:`identity.model`)."""
    from cdp.store import table_exists
    from identity.graph import contacts, install_macros, who

    if not table_exists(con, "identity_units"):
        return []
    install_macros(con)
    notes: list[str] = []
    if table_exists(con, "identity_unit_keys"):
        shared = [
            t
            for (t,) in con.execute(
                """SELECT DISTINCT a.id_type FROM identity_unit_keys a JOIN identity_unit_keys b
                   USING (id_type, id_value) WHERE a.unit_id = ? AND b.unit_id = ? ORDER BY 1""",
                [unit_a, unit_b],
            ).fetchall()
        ]
        if shared:
            notes.append(
                f"they share {', '.join(shared)} but the graph holds it back: its holders disagree on who they "
                "are (names, dates of birth, their own contacts), it is a placeholder, or it is on more records "
                "than max_records_per_identifier"
            )
    rows = con.execute(
        f"""SELECT cdp_names_disagree(a.first_name, a.first_cands, a.last_name, a.last_cands,
                                      b.first_name, b.first_cands, b.last_name, b.last_cands),
                   coalesce(NOT cdp_near_dob(a.dob, b.dob), false),
                   cdp_disagree({who("a")}, {who("b")}),
                   cdp_contacts_disagree({contacts("a")}, {contacts("b")}),
                   a.ambiguous, b.ambiguous
            FROM identity_units a, identity_units b WHERE a.unit_id = ? AND b.unit_id = ?""",
        [unit_a, unit_b],
    ).fetchall()
    if not rows:
        return notes
    names, dobs, disagree, contacts_differ, ambiguous_a, ambiguous_b = rows[0]
    if names:
        notes.append("the precision guard keeps them apart: their first names are clearly different")
    if dobs:
        notes.append("the precision guard keeps them apart: their dates of birth are more than a typo apart")
    if disagree and not names and not dobs:
        notes.append("the precision guard keeps them apart: different online accounts or loyalty cards")
    if contacts_differ:
        notes.append(
            "the contact guard keeps them apart: each has a mailbox and a phone of its own, and no date of birth "
            "ties them (or it does, and their first names differ: twins)"
        )
    for unit, ambiguous in ((unit_a, ambiguous_a), (unit_b, ambiguous_b)):
        if ambiguous:
            notes.append(f"{unit} matched two records that disagree with each other (namesakes): it joins neither")
    return notes
