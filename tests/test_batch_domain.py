"""Batches' plain types and pure functions: parsing input with line-numbered bad lines, `fill`, the
cases' hash, the options' checks, a case's run id, results and progress shapes."""

from __future__ import annotations

import json

import pytest

from tether.domain.batches import (
    BadLine,
    BatchOptions,
    Case,
    CaseRow,
    CaseStatus,
    StoredCase,
    case_result,
    case_run_id,
    cases_hash,
    cases_of,
    fill,
    parse_csv,
    parse_jsonl,
    progress_of,
    task_of,
)
from tether.domain.codec import load_payload
from tether.domain.records import BatchRef, RunStarted


def test_jsonl_reads_objects_and_bare_strings_and_skips_blank_lines() -> None:
    text = "\n".join([
        json.dumps({"input": "2+2", "id": "sum", "vars": {"lang": "fr", "n": 3}, "expected": "4",
                    "metadata": {"tag": "math"}}),
        "",
        json.dumps("just a task"),
        "   ",
        json.dumps({"input": "third"}),
    ])
    cases, bad = parse_jsonl(text)
    assert bad == []
    assert cases == [
        Case(0, "sum", "2+2", {"lang": "fr", "n": "3"}, "4", {"tag": "math"}),
        Case(1, "1", "just a task"),
        Case(2, "2", "third"),
    ]


def test_every_kind_of_bad_jsonl_line_is_reported_with_its_line_number() -> None:
    lines = [
        '{"input": "ok", "id": "a"}',  # 1
        "{not json",  # 2
        "42",  # 3: neither a string nor an object
        '{"id": "x"}',  # 4: no input
        '{"input": 5}',  # 5: input not a string
        '{"input": "t", "colour": "red"}',  # 6: unknown key
        '{"input": "t", "vars": ["a"]}',  # 7: vars not an object
        '{"input": "t", "vars": {"bad name": "v"}}',  # 8: a var name that is not a name
        '{"input": "t", "vars": {"v": {"deep": 1}}}',  # 9: a var that is not a scalar
        '{"input": "t", "metadata": "m"}',  # 10: metadata not an object
        '{"input": "t", "id": ""}',  # 11: empty id
        '{"input": "again", "id": "a"}',  # 12: duplicate id
        '{"input": "t", "id": true}',  # 13: id of a wrong type
    ]
    cases, bad = parse_jsonl("\n".join(lines))
    assert [c.key for c in cases] == ["a"]
    assert [b.line for b in bad] == list(range(2, 14))
    reasons = {b.line: b.reason for b in bad}
    assert "not JSON" in reasons[2]
    assert "string or an object" in reasons[3]
    assert '"input" is missing' in reasons[4]
    assert '"input" must be a string' in reasons[5]
    assert "unknown keys ['colour']" in reasons[6]
    assert '"vars"' in reasons[7]
    assert "'bad name'" in reasons[8]
    assert "var 'v'" in reasons[9]
    assert '"metadata"' in reasons[10]
    assert '"id"' in reasons[11] and '"id"' in reasons[13]
    assert reasons[12] == "duplicate id 'a'"


def test_csv_takes_the_input_column_an_id_column_and_other_columns_as_vars() -> None:
    text = 'id,question,lang\nq1,"What is 2+2?",en\n\nq2,"Line one\nline two",fr\nq3,short\nq1,dup,en\n'
    cases, bad = parse_csv(text, "question")
    assert [(c.key, c.input, c.vars) for c in cases] == [
        ("q1", "What is 2+2?", {"lang": "en"}),
        ("q2", "Line one\nline two", {"lang": "fr"}),
    ]
    # line 6 has too few fields; line 7 repeats an id (the quoted field of q2 spans lines 4-5)
    assert bad == [BadLine(6, "2 fields where the header has 3"), BadLine(7, "duplicate id 'q1'")]


def test_csv_without_the_input_column_is_refused_naming_the_columns() -> None:
    with pytest.raises(ValueError, match=r"no column 'input'; its columns are \['id', 'question'\]"):
        parse_csv("id,question\n1,x\n", "input")


def test_csv_whose_header_repeats_a_column_is_refused_naming_it() -> None:
    """Which of two `input` (or `id`, or var) columns is meant is a guess: refused, not taken in silence."""
    with pytest.raises(ValueError, match=r"the CSV's header repeats the column 'input'"):
        parse_csv("id,input,input\na,b,c\n", "input")
    assert [c.input for c in parse_csv("input,,\nb,,\n", "input")[0]] == ["b"]  # trailing commas are no names


def test_an_iterable_of_tasks_and_a_bad_item_names_its_index() -> None:
    cases = cases_of(["a", {"input": "b", "id": "k"}, Case(9, "c", "c")])
    assert [(c.index, c.key) for c in cases] == [(0, "0"), (1, "k"), (2, "c")]
    with pytest.raises(ValueError, match=r"task 1: .*input"):
        cases_of(["a", {"id": "x"}])
    with pytest.raises(ValueError, match=r"task 1: duplicate id 'x'"):
        cases_of([{"input": "a", "id": "x"}, {"input": "b", "id": "x"}])


def test_fill_replaces_only_names_that_are_vars_and_leaves_json_braces() -> None:
    template = 'Answer in {lang}. Reply as JSON: {"answer": "...", "lang": "{lang}"} for {user}. {} {{x}}'
    assert fill(template, {"lang": "fr"}) == \
        'Answer in fr. Reply as JSON: {"answer": "...", "lang": "fr"} for {user}. {} {{x}}'
    assert fill("no vars {here}", {}) == "no vars {here}"
    assert task_of(Case(0, "0", "2+2", {"lang": "fr"}), "In {lang}: {input}") == "In fr: 2+2"
    assert task_of(Case(0, "0", "2+2 {lang}"), None) == "2+2 {lang}"  # no template: the input as it is


def test_the_cases_hash_changes_with_what_the_cases_ask() -> None:
    a = cases_of(["x", "y"])
    assert cases_hash(a) == cases_hash(cases_of(["x", "y"]))
    assert cases_hash(a) != cases_hash(cases_of(["x", "z"]))
    assert cases_hash(a) != cases_hash(cases_of(["y", "x"]))
    assert cases_hash(a) != cases_hash(cases_of([{"input": "x", "vars": {"a": "1"}}, "y"]))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"concurrency": 0}, "concurrency"),
    ({"concurrency": 2.5}, "concurrency"),
    ({"max_cost_usd": -1}, "max_cost_usd"),
    ({"max_cost_usd": float("inf")}, "max_cost_usd"),
    ({"per_case_max_cost_usd": 0}, "per_case_max_cost_usd"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"on_budget": "finish"}, "on_budget"),
    ({"name": 3}, "name"),
])
def test_bad_options_are_refused_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} "):
        BatchOptions(**kwargs)  # type: ignore[arg-type]


def test_options_round_trip() -> None:
    options = BatchOptions(concurrency=3, max_cost_usd=1.5, name="n", task_template="{input}!")
    assert BatchOptions.from_dict(options.to_dict()) == options


def test_a_case_attempt_has_one_run_id_shaped_like_the_others() -> None:
    batch_id = "batch_0661fe2e0c55a0abcdef012345"
    first = case_run_id(batch_id, "k", 1)
    assert first == case_run_id(batch_id, "k", 1)
    assert first != case_run_id(batch_id, "k", 2) != case_run_id(batch_id, "j", 1)
    assert first.startswith("run_0661fe2e0c55a0") and len(first) == len("run_") + 26


def test_a_run_started_record_without_a_batch_reads_as_none_and_one_with_it_round_trips() -> None:
    old = ('{"agent": {"name": "a", "model": "scripted"}, "input": [], "thread_id": null, "fork": null, '
           '"metadata": {}, "kind": "run_started"}')
    payload = load_payload(old, 2)
    assert isinstance(payload, RunStarted) and payload.batch is None
    from tether.domain.codec import dump_payload

    payload.batch = BatchRef("batch_x", "k", 2)
    again = load_payload(dump_payload(payload), 2)
    assert isinstance(again, RunStarted) and again.batch == BatchRef("batch_x", "k", 2)


def test_a_pending_case_and_its_result_shape() -> None:
    result = case_result(CaseRow(StoredCase(Case(0, "k", "t", expected="4", metadata={"m": 1}))))
    assert result.status == CaseStatus.PENDING and result.run_id is None and result.cost_usd is None
    data = result.to_dict()
    assert data["status"] == "pending" and data["expected"] == "4" and data["metadata"] == {"m": 1}
    assert json.loads(json.dumps(data)) == data


def test_progress_counts_throughput_eta_and_the_budget_warning() -> None:
    counts = {CaseStatus.COMPLETED: 6, CaseStatus.FAILED: 1, CaseStatus.INCOMPLETE: 1, CaseStatus.PENDING: 2}
    p = progress_of("batch_x", counts, total=10, cost_usd=0.85, tokens=100, options=BatchOptions(max_cost_usd=1.0),
                    elapsed_s=4.0, finished_here=8, last_errors=[(str(i), "e") for i in range(7)])
    assert (p.completed, p.failed, p.pending, p.running) == (6, 2, 2, 0)
    assert p.per_s == 2.0 and p.eta_s == 1.0
    assert [k for k, _ in p.last_errors] == ["2", "3", "4", "5", "6"]
    assert p.budget_warning is not None and "85%" in p.budget_warning
    quiet = progress_of("batch_x", counts, total=10, cost_usd=0.5, tokens=100, options=BatchOptions(max_cost_usd=1.0),
                        elapsed_s=0.0, finished_here=0)
    assert quiet.budget_warning is None and quiet.eta_s is None


def test_a_byte_order_mark_is_not_part_of_the_first_line() -> None:
    assert [c.input for c in parse_jsonl('\ufeff"first"\n')[0]] == ["first"]
    assert [c.input for c in parse_csv("\ufeffinput\nfirst\n", "input")[0]] == ["first"]
