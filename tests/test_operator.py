"""The operator configuration (`tether serve --config tether.toml`, `tether config show`) and the
server-side tools it governs: the operator sets every option and cap, a client only narrows limits.

The server tests run a real `tether serve` on 127.0.0.1 with a config file, driven over raw HTTP and
the official `openai` SDK; the end-to-end one runs model-written code in the real sandbox.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from fake_openai import FakeOpenAI, FakeReply, FakeToolCall
from tether.adapters.models.refs import resolve_model
from tether.adapters.tools.builtins import BUILTINS
from tether.domain.errors import ConfigError, InvalidRequest
from tether.services.operator import load_operator_config, redact_url
from tether.services.server_tools import ServerTools, ToolGrant

sys.path.insert(0, str(Path(__file__).resolve().parent / "sdk"))
from server import TetherServer  # tests/sdk/server.py: the subprocess launcher

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "sk-operator-test-key"
PYTHON_LIMITS = sorted(BUILTINS["python"].limit_types())
OPERATOR_ONLY = {"python": {"backend": "monty", "work_root": "/etc/evil", "name": "other"}}


def write(tmp_path: Path, text: str, name: str = "tether.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the file --------------------------------------------------------------------------------------


def test_a_full_file_is_read_and_flags_override_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KEY_A", "sk-a-secret-1")
    monkeypatch.setenv("PGPW", "pg-secret-2")
    (tmp_path / "mcp.json").write_text(json.dumps({"mcpServers": {"git": {"command": "uvx", "args": ["x"]}}}))
    config = load_operator_config(write(tmp_path, """
        mcp_config = "mcp.json"
        [server]
        host = "127.0.0.1"
        port = 9001
        concurrency = 4
        lease_ttl_s = 5
        api_keys = ["${KEY_A}", "sk-literal-3"]
        [store]
        url = "postgresql+psycopg://tether:${PGPW}@db/tether"
        [models]
        base_url = "http://127.0.0.1:11434/v1"
        [mcp_servers.time]
        command = "uvx"
        args = ["mcp-server-time"]
        [tools.python]
        memory_mb = 128
        client_options = ["cpu_s", "memory_mb"]
        caps = { memory_mb = 200 }
        [tools.calculator]
        enabled = false
    """))
    assert config.api_keys == ["sk-a-secret-1", "sk-literal-3"]
    assert config.server.port == 9001 and config.server.lease_ttl_s == 5.0
    assert config.database_url == "postgresql+psycopg://tether:pg-secret-2@db/tether"
    assert config.models.base_url == "http://127.0.0.1:11434/v1"
    assert sorted(config.mcp_servers) == ["git", "time"]  # the file's table and its mcp_config JSON
    tools = config.server_tools()
    assert tools.limits("python") == {"cpu_s": (10.0, 10.0), "memory_mb": (128, 200)}
    assert not tools.grants["calculator"].enabled
    assert config.with_server(port=9002, host=None).server.port == 9002  # a flag wins; an absent one does not


def test_the_documented_configuration_loads(tmp_path, monkeypatch):
    docs = (Path(__file__).resolve().parents[1] / "docs" / "server.md").read_text()
    block = re.search(r"```toml\n(# tether.toml\n.*?)```", docs, re.S)
    assert block, "docs/server.md lost its tether.toml example"
    for var in ("TETHER_KEY_TEAM_A", "TETHER_KEY_TEAM_B", "PGPASSWORD", "OPENAI_API_KEY"):
        monkeypatch.setenv(var, f"value-of-{var}")
    (tmp_path / "mcp.json").write_text(json.dumps({"mcpServers": {"git": {"command": "uvx"}}}))
    config = load_operator_config(write(tmp_path, block.group(1)))
    assert config.api_keys == ["value-of-TETHER_KEY_TEAM_A", "value-of-TETHER_KEY_TEAM_B"]
    assert sorted(config.mcp_servers) == ["git", "time"]
    assert config.server_tools().limits("python") == {"cpu_s": (10.0, 10.0), "memory_mb": (256, 256),
                                                      "output_bytes": (65536, 65536), "wall_s": (15, 60)}
    assert config.batches.max_cost_usd == 5.0


def test_batch_caps_are_read_and_shown(tmp_path):
    config = load_operator_config(write(tmp_path, "[batches]\nmax_concurrency = 4\nmax_cost_usd = 2\nmax_cases = 50"))
    assert (config.batches.max_concurrency, config.batches.max_cost_usd, config.batches.max_cases) == (4, 2.0, 50)
    shown = config.redacted_toml()
    assert "[batches]\nmax_concurrency = 4\nmax_cost_usd = 2.0\nmax_cases = 50" in shown
    assert load_operator_config(None).batches.max_cases is None  # no file: no cap


def test_relative_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    config = load_operator_config(write(tmp_path, '[tools.python]\nwork_root = "work"'))
    assert config.tools["python"].options["work_root"] == str(tmp_path / "work")
    config = load_operator_config(write(tmp_path, '[tools.python]\nwork_root = "/srv/work"'))
    assert config.tools["python"].options["work_root"] == "/srv/work"


@pytest.mark.parametrize(("url", "opened"), [
    ("sqlite:///rel.db", "sqlite:///{folder}/rel.db"),
    ("sqlite+pysqlite:///data/runs.db?timeout=5", "sqlite+pysqlite:///{folder}/data/runs.db?timeout=5"),
    ("sqlite:///${TETHER_TEST_DB}", "sqlite:///{folder}/named.db"),
    ("sqlite:////srv/tether.db", "sqlite:////srv/tether.db"),
    ("sqlite:///~/tether.db", "sqlite:///~/tether.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("sqlite://", "sqlite://"),
    ("postgresql+psycopg://u@db/rel", "postgresql+psycopg://u@db/rel"),
])
def test_a_relative_sqlite_file_is_relative_to_the_file(tmp_path, monkeypatch, url, opened):
    monkeypatch.chdir("/")  # not where a command happens to run (QA: /tmp/rel.db was made from /tmp)
    monkeypatch.setenv("TETHER_TEST_DB", "named.db")
    config = load_operator_config(write(tmp_path, f'[store]\nurl = "{url}"'))
    assert config.database_url == opened.format(folder=tmp_path)
    if opened != url:  # shown as it is opened, its reference still as written
        shown = config.shown_url("store.url", config.database_url)
        assert shown == opened.format(folder=tmp_path).replace("named.db", "${TETHER_TEST_DB}")


def test_a_relative_sqlite_file_from_the_cli_is_made_beside_the_configuration(cli, tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "tether.toml").write_text('[store]\nurl = "sqlite:///rel.db"\n')
    out = cli("runs", "list", "--config", "cfg/tether.toml", cwd=tmp_path)
    assert out.returncode == 0, out.all
    assert (folder / "rel.db").exists() and not (tmp_path / "rel.db").exists()


def test_api_keys_from_a_file_of_keys(tmp_path, monkeypatch):
    (tmp_path / "keys").write_text("# tenants\nsk-one\n\n  sk-two  \n")
    monkeypatch.setenv("TETHER_API_KEYS", "ignored-when-the-file-sets-keys")
    config = load_operator_config(write(tmp_path, '[server]\napi_keys = ["sk-zero"]\napi_keys_file = "keys"'))
    assert config.api_keys == ["sk-zero", "sk-one", "sk-two"]
    (tmp_path / "empty").write_text("# nothing\n")
    for name, words in (("empty", "holds no key"), ("missing", "not found")):
        with pytest.raises(ConfigError, match=words):
            load_operator_config(write(tmp_path, f'[server]\napi_keys_file = "{name}"'))


def test_without_a_file_the_environment_gives_the_defaults(monkeypatch):
    monkeypatch.setenv("TETHER_API_KEYS", "k1, k2")
    monkeypatch.setenv("TETHER_SSE_KEEPALIVE_S", "2.5")
    config = load_operator_config(None)
    assert config.api_keys == ["k1", "k2"] and config.server.keepalive_s == 2.5


@pytest.mark.parametrize(("text", "message"), [
    ("colour = 1", "unknown top-level key 'colour'"),
    ("[server]\nprot = 1", "unknown key 'prot' in [server]"),
    ("[store]\nurl = 'x'\npath = 'y'", "unknown key 'path' in [store]"),
    ("[models]\nkey = 'x'", "unknown key 'key' in [models]"),
    ("[tools.python]\nmemry_mb = 1", "unknown option 'memry_mb'"),
    ("[tools.shell]\nenabled = true", "unknown tool 'shell'"),
    ("[tools.python]\ncaps = { backend = 1 }", "'backend' is not a limit of the python tool"),
    ("[tools.python]\nclient_options = ['work_root']", "'work_root' is not a limit of the python tool"),
    ("[tools.python]\nmemory_mb = 300\ncaps = { memory_mb = 200 }", "caps.memory_mb = 200 is below the value"),
    ("[tools.python]\nbackend = 'docker'", "backend is \"subprocess\" or \"monty\""),
    ("[tools.python]\nmemory_mb = 8", "memory_mb must be at least 32"),
    ("[tools.python]\ncaps = { memory_mb = nan }", "caps.memory_mb: expected an integer, got nan"),
    ("[tools.python]\ncaps = { wall_s = inf }", "caps.wall_s: expected a positive number, got inf"),
    ("[tools.python]\ncaps = { cpu_s = nan }", "caps.cpu_s: expected a positive number, got nan"),
    ("[tools.python]\nmax_files = 1.5", "max_files: expected an integer, got 1.5"),
    ("[tools.python]\nmemory_mb = 1e400", "memory_mb: expected an integer, got inf"),
    ("[tools.python]\nmemory_mb = 'big'", "memory_mb: expected an integer, got 'big'"),
    ("[tools.python]\nmemory_mb = true", "memory_mb: expected an integer, got True"),
    ("[tools.calculator]\nprecision = 3", "unknown option 'precision'; the calculator tool takes no options"),
    ("[server]\nport = 'eighty'", "[server] port must be an integer"),
    ("[server]\nport = 70000", "[server] port must be between 0 and 65535"),
    ("[server]\nallow_file_models = 1", "[server] allow_file_models must be true or false"),
    ("[server]\napi_keys = 'one'", "api_keys must be a list of strings"),
    ("[models]\nbase_url = 'localhost:11434'", "base_url must start with http://"),
    ("[mcp_servers.x]\ncomand = 'uvx'", "[mcp_servers.x]: unknown keys ['comand']"),
    ("[server\nport = 1", "is not valid TOML"),
    ("[server]\nallowed_hosts = ['http://x:80']", "[server] allowed_hosts: 'http://x:80' is not a host name"),
    ("[batches]\nmax_concurency = 4", "unknown key 'max_concurency' in [batches]"),
    ("[batches]\nmax_concurrency = 0", "[batches] max_concurrency must be at least 1, not 0"),
    ("[batches]\nmax_cases = 'many'", "[batches] max_cases must be an integer"),
    ("[batches]\nmax_cost_usd = -1", "[batches] max_cost_usd must be a positive number of dollars"),
    ("[batches]\nmax_cost_usd = nan", "[batches] max_cost_usd must be a positive number of dollars"),
    ("batches = 3", "[batches] must be a table"),
])
def test_a_wrong_file_is_an_error_that_names_what_is_wrong(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_operator_config(write(tmp_path, text))
    assert message in str(e.value)
    assert str(e.value).startswith(str(tmp_path / "tether.toml"))


UNSET = "uses ${TETHER_TEST_UNSET_VAR}, but the environment variable TETHER_TEST_UNSET_VAR is not set"


@pytest.mark.parametrize(("text", "read"), [
    ("[server]\napi_keys = ['sk-set', '${TETHER_TEST_UNSET_VAR}']", lambda c: c.api_keys),
    ("[server]\napi_keys_file = '${TETHER_TEST_UNSET_VAR}/keys'", lambda c: c.api_keys),
    ("[models]\napi_key = '${TETHER_TEST_UNSET_VAR}'", lambda c: c.models.resolved()),
    ("[models]\nbase_url = 'http://${TETHER_TEST_UNSET_VAR}/v1'", lambda c: resolve_model("qwen", backend=c.models)),
    ("[models]\napi_key = '${TETHER_TEST_UNSET_VAR}'", lambda c: resolve_model("openai:gpt", backend=c.models)),
    ("[mcp_servers.x]\ncommand = 'uvx'\nenv = { T = '${TETHER_TEST_UNSET_VAR}' }",
     lambda c: c.mcp_servers["x"].expanded_env()),
    ("[mcp_servers.x]\nurl = 'https://h/mcp'\nheaders = { A = '${TETHER_TEST_UNSET_VAR}' }",
     lambda c: c.mcp_servers["x"].expanded_headers()),
])
def test_a_secret_whose_variable_is_unset_is_an_error_where_it_is_read(tmp_path, text, read):
    path = write(tmp_path, text + '\n[store]\nurl = "sqlite:////srv/x.db"')
    config = load_operator_config(path)  # loads: what uses none of its secrets works (QA item 2)
    assert config.database_url == "sqlite:////srv/x.db"
    with pytest.raises(ConfigError) as e:  # what `tether serve` and `tether config show` check first
        config.require_set()
    assert str(e.value).startswith(f"{path}: [") and str(e.value).endswith(UNSET)
    with pytest.raises(ConfigError, match=re.escape(UNSET)):  # and where the value is read
        read(config)
    assert resolve_model("scripted:tether.examples.florist.offline_model:florist", backend=config.models)


def test_a_store_url_whose_variable_is_unset_is_an_error_at_once(tmp_path):
    path = write(tmp_path, '[store]\nurl = "postgresql+psycopg://u:${TETHER_TEST_UNSET_VAR}@db/t"')
    with pytest.raises(ConfigError) as e:  # every command opens the store
        load_operator_config(path)
    assert str(e.value) == f"{path}: [store] url {UNSET}"


def test_no_secret_is_in_the_configurations_repr(tmp_path, monkeypatch):
    monkeypatch.setenv("OAK", "sk-model-secret-1")
    config = load_operator_config(write(tmp_path, """
        [server]
        api_keys = ["sk-literal-secret-2"]
        [store]
        url = "postgresql+psycopg://tether:pg-secret-3@db/tether"
        [models]
        base_url = "http://user:pw-secret-4@127.0.0.1:11434/v1"
        api_key = "${OAK}"
        [mcp_servers.time]
        command = "uvx"
        env = { PLAIN = "literal-secret-5" }
    """))
    shown = repr(config)
    assert "ModelBackend(base_url='http://user:***@127.0.0.1:11434/v1', api_key=***" in shown
    for secret in ("sk-model-secret-1", "sk-literal-secret-2", "pg-secret-3", "pw-secret-4", "literal-secret-5"):
        assert secret not in shown


def test_serve_and_config_show_refuse_a_secret_whose_variable_is_unset(cli, tmp_path):
    for table in ('[models]\nbase_url = "http://x/v1"\napi_key = "${OPENAI_KEY_UNSET}"',  # QA's msecret.toml
                  '[server]\napi_keys = ["${TEAM_KEY_UNSET}"]',  # QA's secret.toml
                  '[mcp_servers.t]\ncommand = "uvx"\nenv = { T = "${MCP_UNSET}" }'):
        path = write(tmp_path, f'{table}\n[store]\nurl = "sqlite:///x.db"\n')
        variable = re.search(r"\$\{(\w+)\}", table).group(1)  # type: ignore[union-attr]
        for command in ("serve", "config show"):
            out = cli(*command.split(), "--config", str(path))
            assert out.returncode == 2, out.all
            assert out.stderr.startswith(f"error: {path}: ") and len(out.stderr.strip().splitlines()) == 1, out.all
            assert f"the environment variable {variable} is not set" in out.stderr
        assert not (tmp_path / "x.db").exists()  # refused before opening anything


def test_config_show_prints_the_effective_configuration_without_a_secret(cli, tmp_path):
    secrets = {"KEY_A": "sk-a-very-secret-1", "PGPW": "pg-very-secret-2", "OAK": "sk-model-secret-3",
               "MCPTOKEN": "mcp-very-secret-4", "FNCODE": "azure-fn-secret-8"}
    path = write(tmp_path, """
        [server]
        port = 9001
        api_keys = ["${KEY_A}", "sk-literal-secret-5"]
        [store]
        url = "postgresql+psycopg://tether:${PGPW}@db/tether"
        [models]
        base_url = "http://user:pw-secret-6@127.0.0.1:11434/v1?api_version=1&code=${FNCODE}"
        api_key = "${OAK}"
        [mcp_servers.time]
        command = "uvx"
        env = { TOKEN = "${MCPTOKEN}", PLAIN = "literal-secret-7" }
        [mcp_servers.remote]
        url = "https://u:mcp-pw-secret-9@mcp.example/mcp?access_token=mcp-query-secret-10"
        [tools.python]
        work_root = "/srv/tether/work"
        caps = { memory_mb = 512 }
    """)
    out = cli("config", "show", "--config", str(path), extra_env=secrets)
    assert out.returncode == 0, out.all
    for secret in [*secrets.values(), "sk-literal-secret-5", "pw-secret-6", "literal-secret-7", "mcp-pw-secret-9",
                   "mcp-query-secret-10"]:
        assert secret not in out.all
    for shown in ("port = 9001", "api_keys = [\"***\", \"***\"]", "tether:***@db/tether", 'api_key = "***"',
                  'work_root = "/srv/tether/work"', "memory_mb = 512", "[mcp_servers.time]", 'TOKEN = "***"',
                  "api_version=1&code=***"):
        assert shown in out.stdout, (shown, out.stdout)


def test_config_and_serve_refuse_a_bad_file_with_one_line_and_exit_2(cli, tmp_path):
    path = write(tmp_path, "[server]\nprot = 8000\n")
    for args in (("config", "show", "--config", str(path)), ("serve", "--config", str(path)),
                 ("serve", "--config", str(tmp_path / "missing.toml"))):
        out = cli(*args)
        assert out.returncode == 2, out.all
        assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "unknown key 'prot' in [server]" in cli("serve", "--config", str(path)).stderr
    assert "not found" in cli("serve", "--config", str(tmp_path / "missing.toml")).stderr


def test_a_reference_is_shown_as_written_never_its_value(tmp_path, monkeypatch):
    monkeypatch.setenv("TOK", "value-never-shown")
    config = load_operator_config(write(tmp_path, '[models]\nbase_url = "http://h:1/v1?deployment=${TOK}"'))
    assert config.models.base_url == "http://h:1/v1?deployment=value-never-shown"
    assert "deployment=${TOK}" in config.redacted_toml() and "value-never-shown" not in config.redacted_toml()


def test_redact_url_hides_only_the_password():
    assert redact_url("postgresql://u:p%40ss@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


# -- what a client may choose ------------------------------------------------------------------------


def refused(tools: ServerTools, name: str, options: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as e:
        tools.builtin(name, options, "tether_tools[0]")
    return e.value


@pytest.mark.parametrize("option", sorted(OPERATOR_ONLY["python"]))
def test_a_client_never_sets_an_operator_option(option):
    e = refused(ServerTools(), "python", {option: OPERATOR_ONLY["python"][option]})
    assert e.param == f"tether_tools[0].options.{option}"
    assert "set by the server's operator" in str(e)


@pytest.mark.parametrize("limit", PYTHON_LIMITS)
def test_every_limit_a_client_may_lower_but_never_raise_past_the_cap(limit):
    kind, default = BUILTINS["python"].limit_types()[limit]
    tools = ServerTools({"python": ToolGrant(caps={limit: default * 2})})
    raised = refused(tools, "python", {limit: kind(default * 2 + 1)})
    assert raised.param == f"tether_tools[0].options.{limit}" and "above this server's cap" in str(raised)
    assert getattr(tools.builtin("python", {limit: kind(default * 2)}, "p").limits, limit) == default * 2
    lower = kind(max(default // 2, 32)) if limit == "memory_mb" else kind(max(default // 2, 2))
    assert getattr(tools.builtin("python", {limit: lower}, "p").limits, limit) == lower
    # without a cap, the operator's value is the most a client can ask for
    assert "above this server's cap" in str(refused(ServerTools(), "python", {limit: kind(default + 1)}))
    for wrong in (True, "10", None, [1], -1, 0, float("nan"), float("inf"), -0.0):
        assert refused(tools, "python", {limit: wrong}).param == f"tether_tools[0].options.{limit}"


def test_a_limit_the_operator_does_not_list_is_refused_and_the_tool_is_built_as_configured(tmp_path):
    tools = ServerTools({"python": ToolGrant(options={"work_root": str(tmp_path), "memory_mb": 128},
                                             client_options=frozenset({"cpu_s"}))})
    e = refused(tools, "python", {"memory_mb": 64})
    assert "does not let a request set the python tool's 'memory_mb'" in str(e) and "cpu_s (up to 10)" in str(e)
    tool = tools.builtin("python", {"cpu_s": 2}, "p")
    assert tool.work_root == tmp_path and tool.limits.memory_mb == 128 and tool.limits.cpu_s == 2
    assert "has no option 'colour'" in str(refused(tools, "python", {"colour": 1}))
    assert "expected an object" in str(refused(tools, "python", ["cpu_s"]))


def test_calculator_and_mcp_take_no_client_options_and_off_means_off():
    tools = ServerTools({"calculator": ToolGrant(enabled=False)}, {"time": object()})
    assert "switched it off" in str(refused(tools, "calculator", None))
    assert "has no option 'precision'" in str(refused(ServerTools(), "calculator", {"precision": 2}))
    with pytest.raises(InvalidRequest) as e:
        tools.mcp("time", {"command": "rm -rf /"}, "tether_tools[1]")
    assert e.value.param == "tether_tools[1].options"
    with pytest.raises(InvalidRequest) as e:
        tools.mcp("nope", None, "tether_tools[1]")
    assert e.value.param == "tether_tools[1].server" and "offers time" in str(e.value)


# -- through the real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI() as f:
        yield f


@pytest.fixture(scope="module")
def served(fake, tmp_path_factory):
    home = tmp_path_factory.mktemp("operator")
    work_root = home / "operator-work"
    config = home / "tether.toml"
    config.write_text(f"""
        [server]
        api_keys = ["${{OPERATOR_TEST_KEY}}"]
        [models]
        base_url = "{fake.base_url}"
        [tools.python]
        work_root = "{work_root}"
        client_options = ["cpu_s", "wall_s", "memory_mb", "processes", "output_bytes", "files_mb", "max_files"]
        caps = {{ wall_s = 20 }}
    """)
    with TetherServer(model_base_url="http://127.0.0.1:9/unused", home=home, extra_args=["--config", str(config)],
                      extra_env={"OPERATOR_TEST_KEY": KEY}) as srv:
        yield srv, work_root


@pytest.fixture(scope="module")
def http(served):
    srv, _ = served
    with httpx2.Client(base_url=srv.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


def expect_400(response: httpx2.Response, param: str, words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_over_http_every_option_of_every_server_tool_is_the_operators(http):
    cases: list[tuple[dict[str, Any], str, str]] = []
    for option, value in OPERATOR_ONLY["python"].items():
        cases.append(({"type": "python", "options": {option: value}}, f"options.{option}", "operator"))
    for limit in PYTHON_LIMITS:
        kind, default = BUILTINS["python"].limit_types()[limit]
        cases.append(({"type": "python", "options": {limit: kind(default * 100)}}, f"options.{limit}", "cap"))
    cases.append(({"type": "calculator", "options": {"precision": 3}}, "options.precision", "no option"))
    cases.append(({"type": "mcp", "server": "time"}, "server", "Unknown MCP server"))
    cases.append(({"type": "calculator", "server": "time"}, "server", "only an mcp tool names a server"))
    for tool, field_, words in cases:
        r = http.post("/assistants", json={"model": "m", "tether_tools": [{"type": "calculator"}, tool]})
        expect_400(r, f"tether_tools[1].{field_}", words)
    # the same on a run's own tether_tools, and on an update
    asst = http.post("/assistants", json={"model": "m"}).json()
    thread = http.post("/threads", json={}).json()
    r = http.post(f"/threads/{thread['id']}/runs", json={
        "assistant_id": asst["id"], "tether_tools": [{"type": "python", "options": {"memory_mb": 900}}]})
    expect_400(r, "tether_tools[0].options.memory_mb", "above this server's cap of 256")
    r = http.post(f"/assistants/{asst['id']}", json={"tether_tools": [{"type": "python",
                                                                        "options": {"work_root": "/"}}]})
    expect_400(r, "tether_tools[0].options.work_root", "operator")
    assert http.get(f"/threads/{thread['id']}/runs").json()["data"] == []  # nothing was started


def test_over_http_a_client_lowers_a_limit_and_the_code_runs_in_the_operators_folder(served, http, fake):
    from tether.adapters.tools.sandbox import isolation_available

    reason = isolation_available()
    if reason:
        pytest.skip(f"the sandbox is not available here: {reason}")
    _, work_root = served
    code = "open('proof.txt', 'w').write('here'); x = bytearray(100 * 1024 * 1024); print('ALLOC' + 'OK')"

    def reply(body: dict[str, Any]) -> FakeReply | str:
        results = [m["content"] for m in body["messages"] if m.get("role") == "tool"]
        if not results:
            return FakeReply(tool_calls=[FakeToolCall("python", {"code": code})])
        return "result: " + results[-1]

    fake.respond_with(reply)
    client = openai.OpenAI(api_key=KEY, base_url=str(http.base_url).rstrip("/"), max_retries=0)
    outputs = {}
    for memory_mb in (64, 256):  # 64 MB: a request narrowed it; 256: the operator's own value
        asst = client.beta.assistants.create(model="gpt-test", extra_body={"tether_tools": [
            {"type": "python", "options": {"memory_mb": memory_mb, "wall_s": 20}}]})
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "run it"}])
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, timeout=60)
        assert run.status == "completed", run.last_error
        outputs[memory_mb] = client.beta.threads.messages.list(thread_id=thread.id).data[0].content[0].text.value
        assert (work_root / run.id / "proof.txt").read_text() == "here"  # the operator's work_root
    assert "ran out of memory (limit 64 MB)" in outputs[64] and "ALLOCOK" not in outputs[64], outputs[64]
    assert "ALLOCOK" in outputs[256], outputs[256]
