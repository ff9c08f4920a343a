"""`tether batch …` and `tether runs prune`, run as real subprocesses on their own SQLite file (the
`cli` fixture), with a scripted model module written beside them: its answers depend only on the
case's task, and BATCH_TEST_DELAY_S makes each model call take that long (to interrupt a batch)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HELPERS = '''
import asyncio
import os

from tether.adapters.models.scripted import call_tool, reply
from tether.domain.errors import ModelError


async def model(request):
    await asyncio.sleep(float(os.environ.get("BATCH_TEST_DELAY_S", "0")))
    task = [m for m in request.messages if m.role == "user"][-1].text
    results = [m.text for m in request.messages if m.role == "tool"]
    if "fail" in task:
        raise ModelError(f"cannot do {task!r}")
    if "calc" in task and not results:
        return call_tool("calculator", {"expression": "6 * 7"})
    return reply(f"done: {task}" + (f" = {results[0]}" if results else ""))
'''


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    (tmp_path / "batch_helpers.py").write_text(HELPERS)
    path = tmp_path / "batcher.toml"
    path.write_text('name = "batcher"\nmodel = "scripted:batch_helpers:model"\ntools = ["calculator"]\n'
                    'instructions = "You answer {topic} questions."\n')
    return path


def jsonl(path: Path, *items: object) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def batch_id_in(text: str) -> str:
    for word in text.split():
        word = word.strip("`:,.")
        if word.startswith("batch_"):
            return word
    raise AssertionError(f"no batch id in:\n{text}")


def test_a_batch_runs_every_case_writes_results_and_can_be_listed_and_shown(cli, agent, tmp_path):
    cases = jsonl(tmp_path / "cases.jsonl", {"id": "a", "input": "say hi", "vars": {"topic": "greeting"}},
                  "calc the answer", {"input": "say bye", "expected": "done: say bye", "metadata": {"n": 3}})
    out = tmp_path / "results.jsonl"
    ran = cli("batch", "run", str(agent), str(cases), "--out", str(out), "--name", "first", "--concurrency", "2")
    assert ran.returncode == 0, ran.all
    batch_id = batch_id_in(ran.stdout)
    assert "3/3 completed" in ran.stdout
    assert "3/3 done" in ran.stdout  # the progress line a pipe gets (at least the last one)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["key"] for r in results) == ["1", "2", "a"]
    by_key = {r["key"]: r for r in results}
    assert by_key["1"]["output"] == "done: calc the answer = 42" and by_key["1"]["steps"] == 3
    assert by_key["2"]["expected"] == "done: say bye" and by_key["2"]["metadata"] == {"n": 3}
    assert all(r["status"] == "completed" and r["run_id"].startswith("run_") for r in results)

    listed = cli("batch", "list")
    assert listed.returncode == 0 and batch_id in listed.stdout and "first" in listed.stdout, listed.all
    shown = cli("batch", "show", batch_id)
    assert shown.returncode == 0, shown.all
    assert "done: calc the answer = 42" in shown.stdout and "completed" in shown.stdout
    as_json = json.loads(cli("batch", "show", batch_id, "--json", "--status", "completed", "--limit", "2").stdout)
    assert as_json["batch"]["id"] == batch_id and as_json["batch"]["counts"]["completed"] == 3
    assert [c["index"] for c in as_json["cases"]] == [0, 1]
    page = json.loads(cli("batch", "show", batch_id, "--json", "--after", "1").stdout)
    assert [c["index"] for c in page["cases"]] == [2]
    progress = [line for line in ran.stdout.splitlines() if "cases/s" in line]  # a pipe: plain lines
    assert progress[-1].startswith(f"batch {batch_id}: 3/3 done (3 completed, 0 failed") and "\x1b[" not in ran.stdout

    # deleted without its runs, they are ordinary runs, which `runs prune` deletes
    deleted = cli("batch", "delete", batch_id)
    assert deleted.returncode == 0 and f"deleted batch {batch_id}" in deleted.stdout, deleted.all
    dry = cli("runs", "prune", "--older-than", "0.001s", "--dry-run")
    assert dry.returncode == 0 and "would delete 3 finished runs older than 0.001s" in dry.stdout, dry.all
    pruned = cli("runs", "prune", "--older-than", "0.001s")
    assert pruned.returncode == 0 and "deleted 3 finished runs" in pruned.stdout, pruned.all


def test_a_csv_batch_takes_its_input_column_and_vars(cli, agent, tmp_path):
    table = tmp_path / "cases.csv"
    table.write_text("id,question,topic\nq1,say one,maths\nq2,say two,art\n")
    out = tmp_path / "results.csv"
    ran = cli("batch", "run", str(agent), str(table), "--input-column", "question", "--out", str(out),
              "--task-template", "{input} ({topic})")
    assert ran.returncode == 0, ran.all
    text = out.read_text()
    assert text.splitlines()[0].startswith("index,key,status")
    assert "done: say one (maths)" in text and "done: say two (art)" in text
    batch_id = batch_id_in(ran.stdout)
    assert cli("batch", "resume", batch_id).returncode == 0  # the same file, read by its stored column
    table.write_text("id,question,topic\nq1,say one,maths\nq2,say three,art\n")
    refused = cli("batch", "resume", batch_id)
    assert refused.returncode == 2 and "was created from other input" in refused.stderr, refused.all


def test_failed_cases_exit_1_and_retry_failed_runs_only_them(cli, agent, tmp_path):
    cases = jsonl(tmp_path / "cases.jsonl", "say one", "fail now", "say three")
    out = tmp_path / "results.jsonl"
    ran = cli("batch", "run", str(agent), str(cases), "--out", str(out))
    assert ran.returncode == 1, ran.all
    batch_id = batch_id_in(ran.stdout)
    assert "1 failed" in ran.stdout and f"batch resume {batch_id} --retry-failed" in ran.stdout
    failed = json.loads(cli("batch", "show", batch_id, "--json", "--status", "failed").stdout)["cases"]
    assert [c["key"] for c in failed] == ["1"] and "cannot do" in failed[0]["error"]
    runs_before = {c["key"]: c["run_id"] for c in json.loads(cli("batch", "show", batch_id, "--json").stdout)["cases"]}

    again = cli("batch", "resume", batch_id, "--retry-failed", "--out", str(out))
    assert again.returncode == 1, again.all  # it fails again, deterministically
    after = {c["key"]: c for c in json.loads(cli("batch", "show", batch_id, "--json").stdout)["cases"]}
    assert after["1"]["attempt"] == 2 and after["1"]["run_id"] != runs_before["1"]
    assert after["0"]["run_id"] == runs_before["0"] and after["2"]["run_id"] == runs_before["2"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["key"] for r in lines) == ["0", "1", "2"]  # each case once, after the resume too

    deleted = cli("batch", "delete", batch_id, "--with-runs")
    assert deleted.returncode == 0 and "and its runs" in deleted.stdout, deleted.all
    left = cli("runs", "prune", "--older-than", "0.001s", "--dry-run")
    assert "would delete 0 finished runs" in left.stdout, left.all  # they went with the batch


def test_a_resume_is_refused_when_the_input_file_changed(cli, agent, tmp_path):
    cases = jsonl(tmp_path / "cases.jsonl", "say one", "fail two")
    batch_id = batch_id_in(cli("batch", "run", str(agent), str(cases)).stdout)
    jsonl(cases, "say one", "say two instead")
    refused = cli("batch", "resume", batch_id, "--retry-failed")
    assert refused.returncode == 2, refused.all
    assert "was created from other input" in refused.stderr
    cases.unlink()  # gone: the stored cases are the batch's, it goes on without its file
    assert cli("batch", "resume", batch_id, "--retry-failed").returncode == 1


def test_bad_lines_are_refused_with_their_numbers_or_skipped(cli, agent, tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text('"good one"\n{"input": 3}\n\nnot json\n"good two"\n')
    refused = cli("batch", "run", str(agent), str(cases))
    assert refused.returncode == 2, refused.all
    assert f"{cases}:2:" in refused.stderr and f"{cases}:4:" in refused.stderr
    assert "2 bad lines" in refused.stderr and "nothing was created" in refused.stderr
    assert "no batches" in cli("batch", "list").stdout

    skipped = cli("batch", "run", str(agent), str(cases), "--on-bad-line", "skip")
    assert skipped.returncode == 0, skipped.all
    assert "skipped 2 bad lines" in skipped.stderr and "2/2 completed" in skipped.stdout


def test_paused_cases_exit_3_with_the_command_that_answers_them(cli, agent, tmp_path):
    stopping = tmp_path / "stopping.toml"
    stopping.write_text(agent.read_text() + 'breakpoints = ["before_tool:calculator"]\n')
    cases = jsonl(tmp_path / "cases.jsonl", "calc one", "say two", "calc three")
    ran = cli("batch", "run", str(stopping), str(cases))
    assert ran.returncode == 3, ran.all
    batch_id = batch_id_in(ran.stdout)
    assert "2 cases are paused" in ran.stdout and "paused on breakpoint" in ran.stdout
    answer = next(line.strip() for line in ran.stdout.splitlines() if f"batch answer {batch_id}" in line
                  and "--abort" not in line)
    answered = subprocess.run(shlex.split(answer), capture_output=True, text=True, env=cli.env, cwd=tmp_path,
                              timeout=120)
    assert answered.returncode == 0, answered.stdout + answered.stderr
    assert "answered 2 paused cases" in answered.stdout
    resumed = cli("batch", "resume", batch_id)
    assert resumed.returncode == 0, resumed.all
    assert "3/3 completed" in resumed.stdout

    again = batch_id_in(cli("batch", "run", str(stopping), str(cases)).stdout)
    cancelled = cli("batch", "cancel", again)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.all
    counts = json.loads(cli("batch", "show", again, "--json").stdout)["batch"]["counts"]
    assert counts["cancelled"] == 2 and counts["completed"] == 1, counts


def test_ctrl_c_stops_cleanly_and_resume_finishes_every_case_once(cli, agent, tmp_path):
    cases = jsonl(tmp_path / "cases.jsonl", *[f"say {i}" for i in range(12)])
    out = tmp_path / "results.jsonl"
    proc = cli.popen("batch", "run", str(agent), str(cases), "--concurrency", "2", "--out", str(out),
                     extra_env={"BATCH_TEST_DELAY_S": "0.3"})
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    batch_id = batch_id_in(stdout)
    assert "no new case started" in stderr and f"batch resume {batch_id}" in stderr
    left = int(stderr.split("no new case started; ")[1].split()[0])
    assert 0 < left < 12
    done_before = {json.loads(line)["key"] for line in out.read_text().splitlines()}

    resumed = cli("batch", "resume", batch_id, "--out", str(out))
    assert resumed.returncode == 0, resumed.all
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(int(r["key"]) for r in results) == list(range(12))  # each case exactly once
    assert len(done_before) == 12 - left or len(done_before) <= 12 - left
    assert all(r["status"] == "completed" for r in results)


@pytest.mark.skipif(shutil.which("tmux") is None and os.environ.get("CI", "").lower() != "true",
                    reason="tmux is not installed (scripts/setup-system.sh installs it)")
def test_the_progress_view_redraws_in_place_in_a_terminal(cli, agent, tmp_path):
    cases = jsonl(tmp_path / "cases.jsonl", *[f"say {i}" for i in range(8)], "fail here")
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**cli.env, "BATCH_TEST_DELAY_S": "0.2"}.items()
                   if k != "NO_COLOR")
    script = tmp_path / "go.sh"
    script.write_text(f"cd {shlex.quote(str(tmp_path))}\nenv {env} {shlex.quote(sys.executable)} -m "
                      f"tether.interfaces.cli.app batch run {agent} {cases} --concurrency 2\n"
                      "echo EXIT=$?\nsleep 60\n")
    socket = f"tether-test-{os.getpid()}"
    tmux = ["tmux", "-L", socket]
    subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "40", "sh", str(script)], check=True)
    try:
        screens = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
            screens.append(screen)
            if "EXIT=" in screen:
                break
            time.sleep(0.2)
        final = screens[-1]
        assert "EXIT=1" in final, final  # one case failed
        assert "Traceback" not in final
        assert final.count("cases/s") == 1, final  # redrawn in place: one view, not a line a refresh
        assert "8 completed" in final and "1 failed" in final and "last errors:" in final
        assert "cannot do" in final
        assert any("running" in s and "EXIT=" not in s and "cases/s" in s for s in screens), screens
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


@pytest.mark.parametrize(("args", "message"), [
    (["batch", "run", "AGENT", "CASES", "--concurrency", "0"], "--concurrency"),
    (["batch", "run", "AGENT", "CASES", "--max-cost", "-1"], "--max-cost must be a positive number"),
    (["batch", "run", "AGENT", "CASES", "--max-cost", "nan"], "--max-cost must be a positive number"),
    (["batch", "run", "AGENT", "CASES", "--per-case-max-cost", "0"], "--per-case-max-cost must be a positive"),
    (["batch", "run", "AGENT", "CASES", "--on-budget", "wait"], "--on-budget"),
    (["batch", "run", "AGENT", "CASES", "--on-bad-line", "ignore"], "--on-bad-line"),
    (["batch", "run", "AGENT", "CASES", "--out", "results.txt"], "--out must name a .jsonl or .csv file"),
    (["batch", "run", "AGENT", "CASES", "--out", "nowhere/results.jsonl"], "does not exist"),
    (["batch", "run", "AGENT", "CASES", "--input-column", "q"], "--input-column is for a CSV file"),
    (["batch", "run", "AGENT", "cases.txt"], "TASKS must be a .jsonl or .csv file"),
    (["batch", "run", "AGENT", "missing.jsonl"], "does not exist"),
    (["batch", "run", "AGENT", "TABLE", "--input-column", "question"], "no column 'question'"),
    (["batch", "run", "AGENT", "empty.jsonl"], "holds no case"),
    (["batch", "run", "missing.toml", "CASES"], "missing.toml"),
    (["batch", "resume", "batch_nope"], "batch_nope"),
    (["batch", "show", "batch_nope", "--status", "lost"], "unknown status 'lost'"),
    (["batch", "show", "batch_nope", "--limit", "0"], "--limit"),
    (["batch", "cancel", "batch_nope"], "batch_nope"),
    (["batch", "answer", "batch_nope"], "give exactly one of --approve-all, --continue, --rerun-uncertain, --abort"),
    (["batch", "answer", "batch_nope", "--approve-all", "--abort"], "got --approve-all, --abort"),
    (["batch", "answer", "batch_nope", "--abort", "--max-cost", "2"], "use them with --continue"),
    (["runs", "prune", "--older-than", "3 fortnights"], "--older-than takes an age such as 30d"),
])
def test_a_wrong_argument_is_one_line_and_exit_2(cli, agent, tmp_path, args, message):
    jsonl(tmp_path / "cases.jsonl", "say hi")
    (tmp_path / "cases.txt").write_text("say hi\n")
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "table.csv").write_text("input,topic\nsay hi,x\n")
    names = {"AGENT": str(agent), "CASES": str(tmp_path / "cases.jsonl"), "TABLE": str(tmp_path / "table.csv")}
    out = cli(*[names.get(a, a) for a in args])
    assert out.returncode == 2, out.all
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert message in lines[0], lines[0]


DOCS = Path(__file__).resolve().parents[1] / "docs" / "batches.md"


def test_the_docs_terminal_example_runs(cli, tmp_path):
    block = DOCS.read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    assert "tether batch run" in block
    script = block.replace("python -c", f"{shlex.quote(sys.executable)} -c").replace("tether ", f"{cli.prefix} ")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=cli.env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    results = {r["key"]: r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())}
    assert sorted(results) == ["2", "roses", "tulips"]
    assert "Roses cost $2.40" in results["roses"]["output"] and "$1.38" in results["tulips"]["output"]
    assert "3/3 completed" in out.stdout


def _progress(**changes: object):
    from tether.domain.batches import BatchProgress

    values: dict[str, object] = dict(
        batch_id="batch_x", total=10, completed=5, failed=1, paused=1, running=2, pending=1, cancelled=0,
        cost_usd=0.85, tokens=12345, max_cost_usd=1.0, max_tokens=None, elapsed_s=75.0, per_s=0.08, eta_s=40.0,
        last_errors=[("k1", "boom\nwith a second line " + "x" * 200)],
        budget_warning="spent $0.8500 of the $1 budget (85%)")
    values.update(changes)
    return BatchProgress(**values)  # type: ignore[arg-type]


def test_the_view_shows_spend_against_the_budget_its_warning_and_the_last_errors():
    import io

    from rich.console import Console

    from tether.interfaces.cli.batch_progress import plain_line, view

    out = io.StringIO()
    Console(file=out, width=120, force_terminal=False).print(view(_progress()))
    shown = out.getvalue()
    assert "6/10" in shown and "5 completed" in shown and "1 paused" in shown and "2 running" in shown
    assert "0.08 cases/s · ETA 40s · elapsed 1m15s" in shown
    assert "tokens 12,345 · $0.8500 of $1.0000 (85%)" in shown
    assert "spent $0.8500 of the $1 budget (85%)" in shown
    assert "case k1: boom with a second line xxx" in shown and "…" in shown  # one line, cut short
    line = plain_line(_progress(cost_usd=None, budget_warning=None, max_cost_usd=None, max_tokens=50000))
    assert line == ("batch batch_x: 6/10 done (5 completed, 1 failed, 1 paused, 2 running, 1 pending); "
                    "0.08 cases/s, ETA 40s, elapsed 1m15s; tokens 12,345 of 50,000 · cost unknown; "
                    "last error in case k1")
