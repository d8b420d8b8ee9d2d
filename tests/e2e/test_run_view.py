"""The run view in a real browser: /ui/ on a served subprocess, and the MCP App inside a small host page.

Headless Chromium is Debian's ``chromium`` (``make test`` installs it when missing), driven by Playwright
for Python with that executable: Playwright's own browser download is never used. Screenshots go to
``$CODOMYRMEX_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the checkout).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from codomyrmex_orchestration.server._ui import APP_MIME_TYPE, UI_RESOURCE_URI, UiAccess
from tests.helpers.served import Served, served

TOKEN = "run-view-token-0123456789abcdef"
BOOM = "boom: disk on fire"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ARTIFACTS = Path(os.environ.get("CODOMYRMEX_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
WAIT_MS = 20_000
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no connections to the (closed) internet at start
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing: make test installs it with apt-get (see Makefile)")
        pytest.skip("chromium is not installed (make test installs it with apt-get)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        the_browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield the_browser
        the_browser.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # bytes, written here: with path= Playwright writes through its loop's executor, a thread that would
    # outlive the test
    (ARTIFACTS / f"{name}.png").write_bytes(page.screenshot(full_page=True))


def mcp_call(url: str, name: str, arguments: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """One tool call over streamable HTTP, on a thread of its own (Playwright's sync API owns this one)."""

    async def go() -> Any:
        http = httpx2.AsyncClient(headers=headers or {}, timeout=60)
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            return await client.call_tool(name, arguments)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, go).result(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("runview")
    with served(root, ["--allow-shell"], {"CODOMYRMEX_AUTH_TOKEN": TOKEN}) as the_server:
        yield the_server


def mixed_workflow(gate: Path) -> dict[str, Any]:
    """A completed, a failed, a skipped and a still-running step (until ``gate`` exists), and an
    inferred edge."""
    wait_for_gate = f"while [ ! -e {gate} ]; do sleep 0.05; done; echo opened"
    return {
        "name": "mixed",
        "description": "one of each status",
        "steps": [
            {"name": "fetch", "module": "core", "action": "echo", "parameters": {"message": {"n": 3}}},
            {"name": "crash", "module": "core", "action": "fail", "parameters": {"message": BOOM}},
            {
                "name": "after_crash",
                "module": "core",
                "action": "echo",
                "parameters": {"message": 1},
                "dependencies": ["crash"],
            },
            {
                "name": "gate",
                "module": "shell",
                "action": "run",
                "parameters": {"command": wait_for_gate, "shell": True},
            },
            {
                "name": "report",
                "module": "core",
                "action": "echo",
                "parameters": {"message": "{{steps.fetch.output.n}}"},
            },
        ],
    }


def node(page_or_frame: Any, step: str, status: str) -> str:
    return f'g.node[data-step="{step}"][data-status="{status}"]'


def test_the_run_view_draws_every_step_with_its_status_and_follows_a_running_step(
    browser: Any, server: Served, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    created = mcp_call(server.url, "create_workflow", mixed_workflow(gate), AUTH)
    assert not created.is_error, created.content
    started = mcp_call(server.url, "execute_workflow", {"workflow_name": "mixed", "wait": False}, AUTH)
    assert not started.is_error, started.content
    run_id = started.structured_content["run_id"]

    context = browser.new_context()
    page = context.new_page()
    try:
        first = page.goto(f"{server.base}/ui/")
        assert first is not None and first.status == 401
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector(f'tr[data-run="{run_id}"]', timeout=WAIT_MS)
        cookie = next(c for c in context.cookies() if c["name"].startswith("codomyrmex_ui_"))
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["secure"]
        assert TOKEN not in cookie["value"]

        page.goto(f"{server.base}/ui/#/runs/{run_id}")
        for step, status in [
            ("fetch", "completed"),
            ("crash", "failed"),
            ("after_crash", "skipped"),
            ("gate", "running"),
            ("report", "completed"),
        ]:
            page.wait_for_selector(node(page, step, status), timeout=WAIT_MS)
        assert page.locator("svg#dag g.node").count() == 5
        assert page.locator('path.edge.inferred[data-from="fetch"][data-to="report"]').count() == 1
        assert page.locator('path.edge.declared[data-from="crash"][data-to="after_crash"]').count() == 1
        page.click('g.node[data-step="crash"]')
        assert "boom: disk on fire" in page.inner_text("#step-error")
        assert "boom: disk on fire" in (page.text_content('g.node[data-step="crash"] title') or "")
        page.evaluate("window.__notReloaded = true")
        shot(page, "run-view-running")

        gate.touch()
        page.wait_for_selector(node(page, "gate", "completed"), timeout=WAIT_MS)
        page.wait_for_selector('#status [data-run-status="failed"]', timeout=WAIT_MS)
        assert page.evaluate("window.__notReloaded") is True
        assert page.get_attribute("#meta", "data-progress") == "5/5"
        shot(page, "run-view-finished")
    finally:
        gate.touch()
        context.close()


def test_a_one_time_sign_in_link_works_once(browser: Any, server: Served) -> None:
    match = re.search(r"run view: (http://\S+/ui/login\?code=\S+)", server.logs())
    assert match, server.logs()
    link = match.group(1)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(link)
        page.wait_for_selector("h2", timeout=WAIT_MS)
        assert page.url.endswith("/ui/")
    finally:
        context.close()
    second = httpx.get(link, follow_redirects=False)
    assert second.status_code == 401


def test_without_the_token_the_page_and_its_data_answer_401_and_a_foreign_host_421(server: Served) -> None:
    assert httpx.get(f"{server.base}/ui/").status_code == 401
    call = {"name": "list_workflows", "arguments": {}}
    assert httpx.post(f"{server.base}/ui/api/call", json=call).status_code == 401
    forged = {"Cookie": f"{UiAccess(TOKEN).cookie_name}=not-the-right-value"}
    assert httpx.post(f"{server.base}/ui/api/call", json=call, headers=forged).status_code == 401
    assert httpx.get(f"{server.base}/ui/", headers={**AUTH, "Host": "evil.example"}).status_code == 421
    foreign = {**AUTH, "Host": "evil.example"}
    assert httpx.post(f"{server.base}/ui/api/call", json=call, headers=foreign).status_code == 421
    listed = httpx.post(f"{server.base}/ui/api/call", json=call, headers=AUTH)
    assert listed.status_code == 200 and "workflows" in listed.json()["structuredContent"]
    write = {"name": "execute_workflow", "arguments": {"workflow_name": "mixed"}}
    refused = httpx.post(f"{server.base}/ui/api/call", json=write, headers=AUTH)
    assert refused.status_code == 403 and "only reads" in refused.json()["error"]


def test_another_site_cannot_frame_the_sign_in_page(browser: Any, server: Served) -> None:
    # The sign-in page (GET /ui/login, and the 401 page /ui/ answers without credentials) sent no CSP
    # and no X-Frame-Options while /ui/ sends frame-ancestors 'none': any site could frame the form
    # that takes the token.
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_content(
            f'<iframe src="{server.base}/ui/login"></iframe><iframe src="{server.base}/ui/"></iframe>',
            wait_until="load",
        )
        framed = page.frames[1:]
        assert len(framed) == 2
        for frame in framed:
            assert frame.query_selector("input[name=token]") is None, frame.url
        shot(page, "sign-in-not-framed")
        # Opened as a page of its own, the form works (its CSP lets its style and form through).
        sign_in(page, server.base, TOKEN)
    finally:
        context.close()
    for path, headers, status in [("/ui/login", {}, 200), ("/ui/", {}, 401), ("/ui/", AUTH, 200)]:
        answer = httpx.get(f"{server.base}{path}", headers=headers)
        csp = answer.headers.get("content-security-policy", "")
        assert answer.status_code == status, (path, answer.status_code)
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, (path, answer.headers)
        assert answer.headers.get("x-frame-options") == "DENY", (path, answer.headers)


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/ui/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_selector("#main h2", timeout=WAIT_MS)  # the list: signed in


def test_a_link_to_a_run_leads_to_that_run_through_the_sign_in(browser: Any, server: Served) -> None:
    # The address's #/runs/<id> was lost on the way through the sign-in form: the person landed on the
    # list, not on the run the link named.
    run_id = start_run(server, one_step("linked_run", "a"))
    context = browser.new_context()
    try:
        page = context.new_page()
        first = page.goto(f"{server.base}/ui/#/runs/{run_id}")
        assert first is not None and first.status == 401
        page.fill("input[name=token]", "not-the-token-at-all")  # a wrong one first: the form keeps it too
        page.click("button[type=submit]")
        page.wait_for_selector("text=Wrong token.", timeout=WAIT_MS)
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector(node(page, "a", "completed"), timeout=WAIT_MS)
        assert page.url == f"{server.base}/ui/#/runs/{run_id}"
        assert page.inner_text("#title") == f"linked_run · {run_id}"
    finally:
        context.close()


def test_signing_out_ends_the_sign_in_on_the_server_so_its_cookie_is_refused(
    browser: Any, server: Served
) -> None:
    # There was no sign-out: a cookie, once given, worked for as long as the token did.
    call = {"name": "list_workflows", "arguments": {}}
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, server.base, TOKEN)
        cookie = next(c for c in context.cookies() if c["name"] == UiAccess(TOKEN).cookie_name)
        old = {"Cookie": f"{cookie['name']}={cookie['value']}"}
        assert httpx.post(f"{server.base}/ui/api/call", json=call, headers=old).status_code == 200
        page.click("#sign-out button")
        page.wait_for_selector("input[name=token]", timeout=WAIT_MS)
        assert page.url == f"{server.base}/ui/login"
        assert not any(c["name"] == cookie["name"] for c in context.cookies())
        assert httpx.post(f"{server.base}/ui/api/call", json=call, headers=old).status_code == 401
        assert httpx.get(f"{server.base}/ui/", headers=old).status_code == 401
        sign_in(page, server.base, TOKEN)  # a new sign-in is a new session
        assert page.locator("#sign-out button").is_visible()
    finally:
        context.close()


def test_failed_sign_ins_from_one_address_get_429_with_retry_after_past_a_few(tmp_path: Path) -> None:
    # A wrong token could be tried at full speed, without end.
    wrong = {"token": "not-the-token-0123456789"}
    with served(tmp_path / "throttled", env={"CODOMYRMEX_AUTH_TOKEN": TOKEN}) as guarded:
        with httpx.Client(base_url=guarded.base) as http:
            answers = [http.post("/ui/login", data=wrong) for _ in range(5)]
            assert [a.status_code for a in answers] == [401] * 5
            slowed = http.post("/ui/login", data=wrong)
            assert slowed.status_code == 429 and slowed.headers["retry-after"] == "1", slowed.headers
            assert (
                "Too many failed sign-ins from this address" in slowed.text
                and "try again in 1 s" in slowed.text
            )
            # each further failure doubles the wait (counted while it waits too): 2, 4, 8, 16 s
            longer = [http.post("/ui/login", data=wrong) for _ in range(4)]
            assert [a.headers.get("retry-after") for a in longer] == ["2", "4", "8", "16"]
            # while it waits, the right token is refused too, and so is a one-time code
            waiting = http.post("/ui/login", data={"token": TOKEN})
            assert waiting.status_code == 429 and 0 < int(waiting.headers["retry-after"]) <= 16
            assert http.get("/ui/login", params={"code": "guess"}).status_code == 429
            assert http.get("/ui/login").status_code == 200  # the form itself is always shown


def test_two_servers_on_one_host_keep_separate_sign_ins(browser: Any, server: Served, tmp_path: Path) -> None:
    other_token = "another-run-view-token-fedcba9876"
    with served(tmp_path / "other", env={"CODOMYRMEX_AUTH_TOKEN": other_token}) as other:
        context = browser.new_context()
        try:
            page = context.new_page()
            sign_in(page, server.base, TOKEN)
            sign_in(page, other.base, other_token)  # cookies are per host, not per port
            for base in (server.base, other.base):
                answer = page.goto(f"{base}/ui/")
                assert answer is not None and answer.status == 200, base
                page.wait_for_selector("#main h2", timeout=WAIT_MS)
            names = sorted(c["name"] for c in context.cookies())
            assert len(names) == 2 and names[0] != names[1], names
        finally:
            context.close()


# --------------------------------------------------------------------------- the MCP App

HOST_PAGE = """<!doctype html><html><body>
<iframe id="app" sandbox="allow-scripts" style="width:1000px;height:600px;border:0"></iframe>
<script>
const results = %(results)s;
const frame = document.getElementById("app");
window.bridgeLog = [];
window.addEventListener("message", (event) => {
  const msg = event.data;
  if (!msg || msg.jsonrpc !== "2.0") return;
  window.bridgeLog.push(msg.method || "response");
  const reply = (result) => frame.contentWindow.postMessage({ jsonrpc: "2.0", id: msg.id, result }, "*");
  if (msg.method === "ui/initialize") {
    reply({ protocolVersion: "2026-01-26", hostInfo: { name: "test-host", version: "0" },
            hostCapabilities: { serverTools: {} }, hostContext: { theme: "light" } });
  } else if (msg.method === "ui/notifications/initialized") {
    frame.contentWindow.postMessage({ jsonrpc: "2.0", method: "ui/notifications/tool-result",
                                      params: results.execute_workflow }, "*");
  } else if (msg.method === "tools/call") {
    reply(results[msg.params.name] || { isError: true, content: [{ type: "text", text: "unknown tool" }] });
  }
});
frame.srcdoc = %(app)s;
</script></body></html>"""


def result_dict(result: Any) -> dict[str, Any]:
    return {
        "isError": result.is_error,
        "content": [{"type": "text", "text": c.text} for c in result.content],
        "structuredContent": result.structured_content,
    }


def test_the_mcp_app_is_linked_for_apps_clients_and_draws_the_dag_inside_a_host(
    browser: Any, server: Served
) -> None:
    from mcp.client.extension import ClientExtension

    class Apps(ClientExtension):
        """The client side of MCP Apps: what a host such as Claude Desktop advertises."""

        identifier = "io.modelcontextprotocol/ui"

        def settings(self) -> dict[str, Any]:
            return {"mimeTypes": [APP_MIME_TYPE]}

    async def go() -> dict[str, Any]:
        found: dict[str, Any] = {}
        http = httpx2.AsyncClient(headers=AUTH, timeout=60)
        transport = streamable_http_client(server.url, http_client=http)
        async with http, Client(transport, extensions=[Apps()]) as apps:
            tools = {t.name: t for t in (await apps.list_tools()).tools}
            found["linked"] = {n: (t.meta or {}).get("ui", {}).get("resourceUri") for n, t in tools.items()}
            listed = (await apps.list_resources()).resources
            found["listed"] = {str(r.uri): r.mime_type for r in listed}
            read = await apps.read_resource(UI_RESOURCE_URI)
            found["mime"] = read.contents[0].mime_type
            found["html"] = read.contents[0].text
            found["read_meta"] = read.contents[0].meta
            found["listed_meta"] = next(r.meta for r in listed if str(r.uri) == UI_RESOURCE_URI)
            spec = {
                "name": "pair",
                "steps": [
                    {
                        "name": "first",
                        "module": "core",
                        "action": "echo",
                        "parameters": {"message": {"v": 1}},
                    },
                    {
                        "name": "second",
                        "module": "core",
                        "action": "echo",
                        "parameters": {"message": "{{steps.first.output.v}}"},
                    },
                ],
            }
            await apps.call_tool("create_workflow", spec)
            executed = await apps.call_tool("execute_workflow", {"workflow_name": "pair", "wait": True})
            run_id = executed.structured_content["run_id"]
            found["results"] = {
                "execute_workflow": result_dict(executed),
                "get_workflow_run": result_dict(await apps.call_tool("get_workflow_run", {"run_id": run_id})),
                "get_workflow": result_dict(await apps.call_tool("get_workflow", {"name": "pair"})),
            }
        plain_http = httpx2.AsyncClient(headers=AUTH, timeout=60)
        async with plain_http, Client(streamable_http_client(server.url, http_client=plain_http)) as plain:
            found["plain"] = {t.name: (t.meta or {}).get("ui") for t in (await plain.list_tools()).tools}
        return found

    with ThreadPoolExecutor(1) as pool:
        found = pool.submit(anyio.run, go).result(timeout=120)

    for name in ("execute_workflow", "get_workflow_run", "create_workflow"):
        assert found["linked"][name] == UI_RESOURCE_URI
        assert found["plain"][name] is None  # a client without MCP Apps is not pointed at a UI
    assert found["linked"]["list_workflows"] is None
    assert found["listed"][UI_RESOURCE_URI] == APP_MIME_TYPE
    assert found["mime"] == APP_MIME_TYPE
    # hosts' defaults differ: the view asks for the host's border and background (the spec recommends saying)
    assert found["read_meta"] == found["listed_meta"] == {"ui": {"prefersBorder": True}}
    assert "cdn" not in found["html"].lower() and "https://" not in found["html"]  # no network at run time

    page = browser.new_page()
    try:
        # "</" escaped: the app's own </script> must not end the host page's script
        app_literal = json.dumps(found["html"]).replace("</", "<\\/")
        page.set_content(HOST_PAGE % {"results": json.dumps(found["results"]), "app": app_literal})
        frame = page.frame_locator("#app")
        frame.locator(node(frame, "first", "completed")).wait_for(timeout=WAIT_MS)
        frame.locator(node(frame, "second", "completed")).wait_for(timeout=WAIT_MS)
        assert frame.locator('path.edge.inferred[data-from="first"][data-to="second"]').count() == 1
        log = page.evaluate("window.bridgeLog")
        assert log[:2] == ["ui/initialize", "ui/notifications/initialized"] and "tools/call" in log
        shot(page, "run-view-mcp-app")
    finally:
        page.close()


# A host as the MCP Apps specification (2026-01-26) describes one: it answers ui/initialize with a host
# context, sends the opening call's tool-input then its tool-result (or tool-cancelled), relays the app's
# tools/call (answering from results recorded on the server), sizes the frame by size-changed, and can send
# the app requests of its own (ping, ui/resource-teardown). HOST["echo"]: it also sends tool-input and
# tool-result for the app's own calls, as the specification's interactive-phase diagram draws.
SPEC_HOST = """<!doctype html><html><body style="margin:0">
<iframe id="app" sandbox="allow-scripts" style="width:900px;height:200px;border:0"></iframe>
<script>
const recorded = %(recorded)s;
const HOST = %(host)s;
const frame = document.getElementById("app");
window.log = []; window.sizes = []; window.answers = {};
let hostId = 1000;
const send = (message) => frame.contentWindow.postMessage(message, "*");
window.notify = (method, params) => send({ jsonrpc: "2.0", method, params });
window.ask = (method, params) => {
  const id = hostId++;
  send({ jsonrpc: "2.0", id, method, params });
  return id;
};
function answerTo(name, args) {
  const found = name === "get_workflow_run" ? recorded.runs[args.run_id]
    : name === "get_workflow" ? recorded.workflows[args.name]
    : name === "list_workflow_runs" ? recorded.children[args.parent_run_id] : null;
  return found || { isError: true, content: [{ type: "text", text: "not recorded: " + name }] };
}
window.addEventListener("message", (event) => {
  if (event.source !== frame.contentWindow) return;
  const msg = event.data;
  if (!msg || msg.jsonrpc !== "2.0") return;
  if (!msg.method) { window.answers[msg.id] = msg; return; }
  window.log.push(msg.method);
  const reply = (result) => send({ jsonrpc: "2.0", id: msg.id, result });
  if (msg.method === "ui/initialize") {
    window.initialize = msg.params;
    reply({ protocolVersion: "2026-01-26", hostInfo: { name: "spec-host", version: "0" },
            hostCapabilities: { serverTools: {} }, hostContext: HOST.context });
  } else if (msg.method === "ui/notifications/initialized") {
    for (const [method, params] of HOST.opening) window.notify(method, params);
  } else if (msg.method === "ui/notifications/size-changed") {
    window.sizes.push(msg.params);
    frame.style.height = msg.params.height + "px";
  } else if (msg.method === "tools/call") {
    const result = answerTo(msg.params.name, msg.params.arguments || {});
    reply(result);
    if (HOST.echo) {
      window.notify("ui/notifications/tool-input", { arguments: msg.params.arguments || {} });
      window.notify("ui/notifications/tool-result", result);
    }
  }
});
frame.srcdoc = %(app)s;
</script></body></html>"""


@pytest.fixture(scope="module")
def recorded(server: Served) -> dict[str, Any]:
    """A run whose step started a sub-run, recorded through an MCP Apps client: the tool results a host
    hands the app, and the answers to the calls the app makes."""

    async def go() -> dict[str, Any]:
        http = httpx2.AsyncClient(headers=AUTH, timeout=60)
        async with http, Client(streamable_http_client(server.url, http_client=http)) as client:
            for spec in (
                one_step("app_child", "c1"),
                {
                    "name": "app_parent",
                    "steps": [
                        {"name": "first", "module": "core", "action": "echo", "parameters": {"message": 1}},
                        {
                            "name": "sub",
                            "module": "workflow",
                            "action": "run",
                            "parameters": {"workflow": "app_child"},
                            "dependencies": ["first"],
                        },
                    ],
                },
            ):
                assert not (await client.call_tool("create_workflow", spec)).is_error
            run = {"workflow_name": "app_parent", "wait": True}
            executed = await client.call_tool("execute_workflow", run)
            run_id = executed.structured_content["run_id"]
            children = await client.call_tool("list_workflow_runs", {"parent_run_id": run_id, "limit": 500})
            sub_id = children.structured_content["runs"][0]["run_id"]
            missing = await client.call_tool("execute_workflow", {**run, "workflow_name": "app_nowhere"})
            read = await client.read_resource(UI_RESOURCE_URI)
            return {
                "run_id": run_id,
                "sub_id": sub_id,
                "executed": result_dict(executed),
                "missing": result_dict(missing),
                "html": read.contents[0].text,
                "runs": {
                    rid: result_dict(await client.call_tool("get_workflow_run", {"run_id": rid}))
                    for rid in (run_id, sub_id)
                },
                "workflows": {
                    name: result_dict(await client.call_tool("get_workflow", {"name": name}))
                    for name in ("app_parent", "app_child")
                },
                "children": {
                    run_id: result_dict(children),
                    sub_id: result_dict(
                        await client.call_tool("list_workflow_runs", {"parent_run_id": sub_id, "limit": 500})
                    ),
                },
            }

    with ThreadPoolExecutor(1) as pool:
        found: dict[str, Any] = pool.submit(anyio.run, go).result(timeout=120)
    return found


@contextmanager
def in_spec_host(
    browser: Any,
    recorded: dict[str, Any],
    opening: Sequence[tuple[str, dict[str, Any]]],
    *,
    echo: bool = False,
    theme: str = "light",
) -> Iterator[tuple[Any, Any]]:
    """The app in :data:`SPEC_HOST`, which sends ``opening`` after ``ui/notifications/initialized``:
    (the host page, the app's frame)."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    literal = {  # "</" escaped: the app's own </script> must not end the host page's script
        "recorded": json.dumps({k: v for k, v in recorded.items() if k != "html"}).replace("</", "<\\/"),
        "host": json.dumps({"opening": opening, "echo": echo, "context": {"theme": theme}}),
        "app": json.dumps(recorded["html"]).replace("</", "<\\/"),
    }
    try:
        page.set_content(SPEC_HOST % literal)
        yield page, page.frame_locator("#app")
        assert errors == []
    finally:
        page.close()


def opened_by(result: dict[str, Any], arguments: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("ui/notifications/tool-input", {"arguments": arguments}),
        ("ui/notifications/tool-result", result),
    ]


def round_trip(page: Any, method: str = "ping") -> dict[str, Any]:
    """The app's answer to a request from the host; every message the host sent before it was handled
    first (postMessage keeps order)."""
    asked = page.evaluate("(method) => window.ask(method, {reason: 'the test is over'})", method)
    page.wait_for_function("(id) => window.answers[id] !== undefined", arg=asked, timeout=WAIT_MS)
    answer: dict[str, Any] = page.evaluate("(id) => window.answers[id]", asked)
    return answer


def test_in_a_host_a_sub_run_link_opens_the_sub_run_inside_the_app_and_its_parent_link_leads_back(
    browser: Any, recorded: dict[str, Any]
) -> None:
    run_id, sub_id = recorded["run_id"], recorded["sub_id"]
    opening = opened_by(recorded["executed"], {"workflow_name": "app_parent", "wait": True})
    with in_spec_host(browser, recorded, opening) as (page, frame):
        # A srcdoc frame resolves "#/runs/..." against the host's address: followed, it unloads the app.
        frame.locator(f'#sub-runs a[data-sub-run="{sub_id}"]').click()
        frame.locator(node(frame, "c1", "completed")).wait_for(timeout=WAIT_MS)
        assert frame.locator("#title").inner_text() == f"app_child · {sub_id}"
        frame.locator("#parent-run").press("Enter")  # the keyboard follows the link too
        frame.locator(node(frame, "sub", "completed")).wait_for(timeout=WAIT_MS)
        assert frame.locator("#title").inner_text() == f"app_parent · {run_id}"
        assert page.frames[1].url == "about:srcdoc"  # the app was never navigated away


@pytest.mark.parametrize(
    ("ending", "said"),
    [
        ("missing", "workflow 'app_nowhere' not found"),
        ("cancelled", "The tool call was cancelled: the person pressed stop"),
    ],
)
def test_in_a_host_a_tool_call_that_failed_or_was_cancelled_is_said_not_waited_for(
    browser: Any, recorded: dict[str, Any], ending: str, said: str
) -> None:
    last = (
        ("ui/notifications/tool-result", recorded["missing"])
        if ending == "missing"
        else ("ui/notifications/tool-cancelled", {"reason": "the person pressed stop"})
    )
    opening = [("ui/notifications/tool-input", {"arguments": {"workflow_name": "app_nowhere"}}), last]
    with in_spec_host(browser, recorded, opening) as (_page, frame):
        frame.locator("#load-error").wait_for(timeout=WAIT_MS)
        assert said in frame.locator("#load-error").inner_text()


def test_in_a_host_the_app_reports_the_height_of_its_content_each_time_it_changes(
    browser: Any, recorded: dict[str, Any]
) -> None:
    opening = opened_by(recorded["executed"], {"workflow_name": "app_parent", "wait": True})
    with in_spec_host(browser, recorded, opening) as (page, frame):
        frame.locator(node(frame, "sub", "completed")).wait_for(timeout=WAIT_MS)
        height = "() => Math.ceil(document.documentElement.getBoundingClientRect().height)"
        # The host sizes its frame by what the app reports (200 px at first): the whole view must fit.
        drawn = frame.locator("html").evaluate(height)
        page.wait_for_function("(h) => window.sizes.some((s) => s.height === h)", arg=drawn, timeout=WAIT_MS)
        assert drawn > 200
        frame.locator(node(frame, "first", "completed")).click()  # the details grow
        frame.locator("#details h3").wait_for(timeout=WAIT_MS)
        grown = frame.locator("html").evaluate(height)
        assert grown > drawn
        page.wait_for_function("(h) => window.sizes.at(-1).height === h", arg=grown, timeout=WAIT_MS)
        sizes = page.evaluate("window.sizes")
        assert len(sizes) == len({json.dumps(s) for s in sizes})  # only changes are reported


def test_in_a_host_the_app_answers_ping_and_teardown_and_unknown_requests_say_so(
    browser: Any, recorded: dict[str, Any]
) -> None:
    opening = opened_by(recorded["executed"], {"workflow_name": "app_parent", "wait": True})
    with in_spec_host(browser, recorded, opening) as (page, frame):
        frame.locator(node(frame, "sub", "completed")).wait_for(timeout=WAIT_MS)
        assert round_trip(page, "ping")["result"] == {}
        assert round_trip(page, "ui/no-such-method")["error"]["code"] == -32601
        assert round_trip(page, "ui/resource-teardown")["result"] == {}


def test_in_a_host_that_echoes_the_apps_own_calls_only_the_opening_call_moves_the_view(
    browser: Any, recorded: dict[str, Any]
) -> None:
    opening = opened_by(recorded["executed"], {"workflow_name": "app_parent", "wait": True})
    with in_spec_host(browser, recorded, opening, echo=True) as (page, frame):
        frame.locator(node(frame, "sub", "completed")).wait_for(timeout=WAIT_MS)
        # Not from the host (the app's own window): ignored.
        frame.locator("body").evaluate(
            """() => window.postMessage({jsonrpc: "2.0", method: "ui/notifications/tool-result",
                 params: {structuredContent: {name: "app_child"}}}, "*")"""
        )
        round_trip(page)
        assert frame.locator("#title").inner_text() == f"app_parent · {recorded['run_id']}"
        calls = page.evaluate("window.log.filter((m) => m === 'tools/call').length")
        assert calls == 3  # the run, its definition, its sub-runs: once each (it has ended)


def test_in_a_dark_host_the_app_is_dark_follows_a_theme_change_and_declares_its_display_modes(
    browser: Any, recorded: dict[str, Any]
) -> None:
    opening = opened_by(recorded["executed"], {"workflow_name": "app_parent", "wait": True})
    background = "() => getComputedStyle(document.body).backgroundColor"
    with in_spec_host(browser, recorded, opening, theme="dark") as (page, frame):
        frame.locator(node(frame, "sub", "completed")).wait_for(timeout=WAIT_MS)
        modes = page.evaluate("window.initialize.appCapabilities.availableDisplayModes")
        assert modes == ["inline", "fullscreen"]
        dark = frame.locator("body").evaluate(background)
        assert dark != "rgb(255, 255, 255)"
        page.evaluate("window.notify('ui/notifications/host-context-changed', {theme: 'light'})")
        round_trip(page)
        assert frame.locator("body").evaluate(background) == "rgb(255, 255, 255)"
        page.evaluate("window.notify('ui/notifications/host-context-changed', {displayMode: 'fullscreen'})")
        round_trip(page)  # a change without a theme keeps the one there is
        assert frame.locator("body").evaluate(background) == "rgb(255, 255, 255)"
        shot(page, "run-view-mcp-app-light-after-dark")


def test_the_cli_prints_a_runs_url_in_the_run_view_of_the_server_on_its_state(server: Served) -> None:
    import subprocess

    from tests.helpers.served import SCRIPT, server_env

    created = mcp_call(
        server.url,
        "create_workflow",
        {
            "name": "tiny",
            "steps": [{"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}],
        },
        AUTH,
    )
    assert not created.is_error
    run = mcp_call(server.url, "execute_workflow", {"workflow_name": "tiny", "wait": True}, AUTH)
    run_id = run.structured_content["run_id"]
    root = server.state_dir.parent
    shown = subprocess.run(
        [str(SCRIPT), "show", run_id, "--open"],
        env=server_env(root),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"{server.base}/ui/#/runs/{run_id}"


def test_without_a_server_show_open_says_how_to_start_one(tmp_path: Path) -> None:
    import subprocess

    from tests.helpers.served import SCRIPT, server_env

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args],
            env=server_env(tmp_path),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    document = {
        "name": "solo",
        "steps": [{"name": "a", "module": "core", "action": "echo", "parameters": {"message": 1}}],
    }
    (tmp_path / "solo.json").write_text(json.dumps(document))
    ran = cli("run", str(tmp_path / "solo.json"), "--json")
    assert ran.returncode == 0, ran.stderr
    shown = cli("show", json.loads(ran.stdout)["run_id"], "--open")
    assert shown.returncode == 1
    assert "no server with a run view is running" in shown.stderr and "make run" in shown.stderr


# --------------------------------------------------------------------------- navigating the page

#: Page instrumentation (browser built-ins only): JSON bodies read so far, and ``get_workflow_run``
#: fetches held back while ``__holdRuns`` is set, until the test releases them.
HOLD_RUN_FETCHES = """
window.__bodiesRead = 0;
const readJson = Response.prototype.json;
Response.prototype.json = function () {
  return readJson.call(this).then((value) => { window.__bodiesRead++; return value; });
};
window.__holdRuns = false;
window.__held = [];
const realFetch = window.fetch;
window.fetch = (url, init) => {
  const answer = realFetch(url, init);
  if (!window.__holdRuns || !String((init || {}).body).includes('"get_workflow_run"')) return answer;
  return new Promise((resolve) => window.__held.push(() => resolve(answer)));
};
"""


def one_step(name: str, *steps: str) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"name": s, "module": "core", "action": "echo", "parameters": {"message": s}}
            for s in steps or ("a",)
        ],
    }


def test_a_poll_in_flight_when_you_leave_a_run_never_draws_that_run_again(
    browser: Any, server: Served, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    created = mcp_call(server.url, "create_workflow", one_step("elsewhere", "only"), AUTH)
    assert not created.is_error, created.content
    waiting = gated("held_run", gate)
    with gated_run_page(browser, server, waiting, [gate], init_script=HOLD_RUN_FETCHES) as (page, _run_id):
        page.wait_for_selector(node(page, "gate", "running"), timeout=WAIT_MS)
        page.evaluate("window.__holdRuns = true")
        page.wait_for_function("() => window.__held.length > 0", timeout=WAIT_MS)  # the next poll, in flight
        page.evaluate("location.hash = '#/workflows/elsewhere'")
        page.wait_for_selector(node(page, "only", "defined"), timeout=WAIT_MS)
        read = page.evaluate("window.__bodiesRead")
        page.evaluate("window.__holdRuns = false; window.__held.splice(0).forEach((release) => release())")
        # the old poll's answer is read (the page's await on it runs before the next task)
        page.wait_for_function(f"() => window.__bodiesRead > {read}", timeout=WAIT_MS)
        assert page.inner_text("#title") == "workflow elsewhere"
        assert page.locator(node(page, "only", "defined")).count() == 1
        assert page.locator('g.node[data-step="gate"]').count() == 0


def test_the_list_shows_a_run_started_elsewhere_even_when_every_listed_run_had_finished(
    browser: Any, tmp_path: Path
) -> None:
    with served(tmp_path / "quiet", env={"CODOMYRMEX_AUTH_TOKEN": TOKEN}) as quiet:
        context = browser.new_context()
        try:
            page = context.new_page()
            sign_in(page, quiet.base, TOKEN)
            assert page.inner_text("#main .empty") == "No runs yet."  # nothing unfinished to follow
            assert not mcp_call(quiet.url, "create_workflow", one_step("later"), AUTH).is_error
            run = mcp_call(quiet.url, "execute_workflow", {"workflow_name": "later", "wait": True}, AUTH)
            run_id = run.structured_content["run_id"]
            page.wait_for_selector(f'tr[data-run="{run_id}"]', timeout=WAIT_MS)
        finally:
            context.close()


def test_a_redefined_workflow_shows_its_new_steps_without_a_reload(browser: Any, server: Served) -> None:
    assert not mcp_call(server.url, "create_workflow", one_step("redefined", "one"), AUTH).is_error
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, server.base, TOKEN)
        page.evaluate("window.__notReloaded = true")
        page.evaluate("location.hash = '#/workflows/redefined'")
        page.wait_for_selector(node(page, "one", "defined"), timeout=WAIT_MS)
        overwrite = {**one_step("redefined", "one", "two", "three"), "overwrite": True}
        assert not mcp_call(server.url, "create_workflow", overwrite, AUTH).is_error
        page.evaluate("location.hash = '#/'")
        page.wait_for_selector("#main h2", timeout=WAIT_MS)
        page.evaluate("location.hash = '#/workflows/redefined'")
        page.wait_for_selector(node(page, "three", "defined"), timeout=WAIT_MS)
        assert page.locator("svg#dag g.node").count() == 3
        assert page.evaluate("window.__notReloaded") is True
    finally:
        context.close()


@pytest.mark.parametrize("fragment", ["#/runs/%E0%A4%A", "#/workflows/%ZZ"])
def test_a_malformed_escape_in_the_address_says_the_address_is_bad(
    browser: Any, server: Served, fragment: str
) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        sign_in(page, server.base, TOKEN)
        page.goto(f"{server.base}/ui/{fragment}")
        message = page.wait_for_selector("#load-error", timeout=WAIT_MS)
        assert message is not None and "not a valid address" in message.inner_text()
        assert "Loading" not in page.inner_text("#main") and errors == []
    finally:
        context.close()


# --------------------------------------------------------------------------- losing the server

API = "**/ui/api/call"


def gated(name: str, gate: Path) -> dict[str, Any]:
    """One shell step that runs until ``gate`` exists."""
    return {"name": name, "steps": [mixed_workflow(gate)["steps"][3]]}


def start_run(server: Served, spec: dict[str, Any]) -> str:
    created = mcp_call(server.url, "create_workflow", {**spec, "overwrite": True}, AUTH)
    assert not created.is_error, created.content
    started = mcp_call(server.url, "execute_workflow", {"workflow_name": spec["name"], "wait": False}, AUTH)
    assert not started.is_error, started.content
    return str(started.structured_content["run_id"])


@contextmanager
def gated_run_page(
    browser: Any,
    server: Served,
    spec: dict[str, Any],
    gates: Sequence[Path],
    *,
    init_script: str | None = None,
    viewport: dict[str, int] | None = None,
) -> Iterator[tuple[Any, str]]:
    """A signed-in page showing a new run of ``spec`` (whose steps wait for ``gates``), with its first
    step drawn; at the end the gates open, so no run outlives the test, and the browser context closes."""
    run_id = start_run(server, spec)
    context = browser.new_context(**({"viewport": viewport} if viewport else {}))
    if init_script is not None:
        context.add_init_script(init_script)
    try:
        page = context.new_page()
        sign_in(page, server.base, TOKEN)
        page.goto(f"{server.base}/ui/#/runs/{run_id}")
        page.wait_for_selector("svg#dag g.node", timeout=WAIT_MS)
        yield page, run_id
    finally:
        for gate in gates:
            gate.touch()
        context.close()


def test_a_run_view_that_loses_the_server_keeps_its_view_retries_and_catches_up_when_it_answers(
    browser: Any, server: Served, tmp_path: Path
) -> None:
    # One failed request (the server stopped and started again) froze the page on "running" with only
    # "Failed to fetch" in its body, and it never polled again, while the run had ended.
    gate = tmp_path / "gate"
    with gated_run_page(browser, server, gated("lost_server", gate), [gate]) as (page, run_id):
        page.wait_for_selector(node(page, "gate", "running"), timeout=WAIT_MS)

        def refused(route: Any) -> None:
            route.abort("connectionrefused")

        page.route(API, refused)
        page.wait_for_selector("#connection:has-text('disconnected, retrying')", timeout=WAIT_MS)
        assert "cannot be reached" in page.inner_text("#connection")
        assert page.locator(node(page, "gate", "running")).count() == 1  # the last view is kept
        assert page.locator("#load-error").count() == 0
        page.unroute(API, refused)

        def unavailable(route: Any) -> None:
            route.fulfill(status=503, content_type="application/json", body='{"error": "starting"}')

        page.route(API, unavailable)
        page.wait_for_selector("#connection:has-text('answered 503 (starting)')", timeout=WAIT_MS)
        gate.touch()  # the run ends while the page cannot see it
        page.unroute(API, unavailable)
        page.wait_for_selector(node(page, "gate", "completed"), timeout=WAIT_MS)
        page.wait_for_selector('#status [data-run-status="completed"]', timeout=WAIT_MS)
        assert page.inner_text("#connection") == ""

        page.evaluate("location.hash = '#/'")  # the list, too
        page.wait_for_selector(f'tr[data-run="{run_id}"]', timeout=WAIT_MS)
        page.route(API, refused)
        page.wait_for_selector("#connection:has-text('disconnected, retrying')", timeout=WAIT_MS)
        assert page.locator(f'tr[data-run="{run_id}"]').count() == 1
        page.unroute(API, refused)
        page.wait_for_function(
            "() => document.getElementById('connection').textContent === ''", timeout=WAIT_MS
        )


def test_a_run_view_signed_out_meanwhile_says_so_and_links_to_the_sign_in(
    browser: Any, server: Served, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with gated_run_page(browser, server, gated("signed_out", gate), [gate]) as (page, run_id):
        page.wait_for_selector(node(page, "gate", "running"), timeout=WAIT_MS)
        page.context.clear_cookies()  # as when the server's token changes: the next poll gets a real 401
        page.wait_for_selector("#connection:has-text('signed out')", timeout=WAIT_MS)
        assert "retrying" not in page.inner_text("#connection")
        assert page.get_attribute("#sign-in-again", "href") == f"login#/runs/{run_id}"  # back to this run
        assert page.locator(node(page, "gate", "running")).count() == 1


#: Page instrumentation: how many answers of the server the page has read (each poll reads one).
COUNT_ANSWERS = """
window.__answers = 0;
const readJson = Response.prototype.json;
Response.prototype.json = function () {
  return readJson.call(this).then((value) => { window.__answers++; return value; });
};
"""


def test_a_poll_keeps_the_focus_the_selection_and_the_scroll_of_what_did_not_change(
    browser: Any, server: Served, tmp_path: Path
) -> None:
    # Every poll (600 ms) drew the whole run again: the focused step, a selection in its details and the
    # graph's scroll were lost each time.
    first, second = tmp_path / "first", tmp_path / "second"
    wait = mixed_workflow(first)["steps"][3]
    spec = {
        "name": "live",
        "steps": [
            {"name": "fetch", "module": "core", "action": "echo", "parameters": {"message": "keep me"}},
            {**wait, "name": "gate"},
            {**mixed_workflow(second)["steps"][3], "name": "hold"},
        ]
        + [{**wait, "name": f"more{n}", "dependencies": ["gate"]} for n in range(6)],
    }
    small = {"width": 760, "height": 260}
    with gated_run_page(
        browser, server, spec, [first, second], init_script=COUNT_ANSWERS, viewport=small
    ) as (page, _run_id):
        page.wait_for_selector(node(page, "fetch", "completed"), timeout=WAIT_MS)
        page.click('g.node[data-step="fetch"]')  # selects it and focuses it
        page.wait_for_selector("#details pre", timeout=WAIT_MS)
        selected = page.evaluate(
            """() => {
              const range = document.createRange();
              range.selectNodeContents(document.querySelector("#details pre"));
              getSelection().removeAllRanges();
              getSelection().addRange(range);
              window.__fetch = document.querySelector('g.node[data-step="fetch"]');
              window.__gate = document.querySelector('g.node[data-step="gate"]');
              const graph = document.querySelector(".graph");
              graph.scrollLeft = graph.scrollWidth;
              window.scrollTo(0, document.documentElement.scrollHeight);
              return [getSelection().toString(), graph.scrollLeft, window.scrollY];
            }"""
        )
        text, graph_top, page_y = selected
        assert "keep me" in text and graph_top > 0 and page_y > 0, selected
        assert page.evaluate("document.activeElement.dataset.step") == "fetch"

        first.touch()  # one step changes; the others stay as they were
        page.wait_for_selector(node(page, "gate", "completed"), timeout=WAIT_MS)
        seen = page.evaluate("window.__answers")
        page.wait_for_function(f"() => window.__answers >= {seen + 4}", timeout=WAIT_MS)  # more polls

        kept = page.evaluate(
            """() => [document.activeElement === window.__fetch, getSelection().toString(),
                      document.querySelector(".graph").scrollLeft, window.scrollY,
                      document.querySelector('g.node[data-step="gate"]') === window.__gate]"""
        )
        assert kept == [True, text, graph_top, page_y, True], kept
        label = page.get_attribute('g.node[data-step="gate"]', "aria-label") or ""
        assert label.startswith("step gate: completed"), label

        page.focus("#all-runs")  # the header is patched in place too
        seen = page.evaluate("window.__answers")
        page.wait_for_function(f"() => window.__answers >= {seen + 3}", timeout=WAIT_MS)
        assert page.evaluate("document.activeElement.id") == "all-runs"


# --------------------------------------------------------------------------- sub-runs and the list


def test_a_run_links_to_the_sub_runs_its_steps_started_and_a_sub_run_to_its_parent(
    browser: Any, server: Served, tmp_path: Path
) -> None:
    # A workflow.run step's sub-run was nowhere to be found from its parent's page, nor the parent from it.
    gate = tmp_path / "gate"
    child = gated("linked_child", gate)
    assert not mcp_call(server.url, "create_workflow", {**child, "overwrite": True}, AUTH).is_error
    parent = {
        "name": "linked_parent",
        "steps": [
            {"name": "call", "module": "workflow", "action": "run", "parameters": {"workflow": child["name"]}}
        ],
    }
    with gated_run_page(browser, server, parent, [gate]) as (page, parent_id):
        link = page.wait_for_selector('#sub-runs li[data-step="call"] a[data-sub-run]', timeout=WAIT_MS)
        assert link is not None
        child_id = link.get_attribute("data-sub-run")
        assert child_id and child_id != parent_id
        page.click('g.node[data-step="call"]')  # the step that started it names it too
        assert (
            page.get_attribute(f'#step-sub-runs a[data-sub-run="{child_id}"]', "href") == f"#/runs/{child_id}"
        )

        page.click(f'#sub-runs a[data-sub-run="{child_id}"]')
        page.wait_for_selector(node(page, "gate", "running"), timeout=WAIT_MS)
        assert child_id in page.inner_text("#title")
        up = page.wait_for_selector("#parent-run", timeout=WAIT_MS)
        assert up is not None and "step call" in up.inner_text()
        up.click()
        page.wait_for_selector('g.node[data-step="call"]', timeout=WAIT_MS)
        assert parent_id in page.inner_text("#title")
        assert page.locator("#parent-run").count() == 0  # a top-level run has no parent

    # what the page reads: list_workflow_runs' parent_run_id, a malformed one refused naming the field
    bad = {"name": "list_workflow_runs", "arguments": {"parent_run_id": ""}}
    refused = httpx.post(f"{server.base}/ui/api/call", json=bad, headers=AUTH).json()
    assert refused["isError"] and "parent_run_id" in refused["content"][0]["text"], refused


def test_the_list_of_runs_filters_by_status_and_pages_to_older_runs_by_keyboard_across_polls(
    browser: Any, tmp_path: Path
) -> None:
    # The list showed the newest 50 runs of any status, with no way to see older ones or only the failed.
    with served(tmp_path / "many", env={"CODOMYRMEX_AUTH_TOKEN": TOKEN}) as many:
        assert not mcp_call(many.url, "create_workflow", one_step("leaf"), AUTH).is_error
        fan = {
            "name": "fan",
            "steps": [
                {
                    "name": "call",
                    "module": "workflow",
                    "action": "run",
                    "parameters": {"workflow": "leaf"},
                    "for_each": list(range(26)),
                }
            ],
        }
        assert not mcp_call(many.url, "create_workflow", fan, AUTH).is_error
        done = mcp_call(many.url, "execute_workflow", {"workflow_name": "fan", "wait": True}, AUTH)
        assert done.structured_content["status"] == "completed", done.content
        bad = {
            "name": "bad",
            "steps": [{"name": "boom", "module": "core", "action": "fail", "parameters": {}}],
        }
        assert not mcp_call(many.url, "create_workflow", bad, AUTH).is_error
        failed = mcp_call(many.url, "execute_workflow", {"workflow_name": "bad", "wait": True}, AUTH)
        failed_id = failed.structured_content["run_id"]  # 28 runs: 27 completed, this one failed
        context = browser.new_context()
        context.add_init_script(COUNT_ANSWERS)
        try:
            page = context.new_page()
            sign_in(page, many.base, TOKEN)
            rows = "#runs tr[data-run]"
            page.wait_for_function(
                f"() => document.querySelectorAll('{rows}').length === 25", timeout=WAIT_MS
            )
            first_page = set(page.eval_on_selector_all(rows, "rows => rows.map((r) => r.dataset.run)"))
            assert page.is_disabled("#runs-newer") and not page.is_disabled("#runs-older")
            assert page.inner_text("label[for=status-filter]").strip() == "status"

            page.focus("#runs-older")
            page.keyboard.press("Enter")
            page.wait_for_function(f"() => document.querySelectorAll('{rows}').length === 3", timeout=WAIT_MS)
            older = set(page.eval_on_selector_all(rows, "rows => rows.map((r) => r.dataset.run)"))
            assert not older & first_page and page.inner_text("#runs-page") == "page 2"
            assert page.is_disabled("#runs-older")
            assert page.evaluate("document.activeElement.id") == "runs-newer"  # the focus stays on a button
            seen = page.evaluate("window.__answers")
            page.wait_for_function(f"() => window.__answers >= {seen + 2}", timeout=WAIT_MS)  # a poll
            assert set(page.eval_on_selector_all(rows, "rows => rows.map((r) => r.dataset.run)")) == older

            page.focus("#status-filter")
            page.select_option("#status-filter", "failed")
            page.wait_for_selector(f'{rows}[data-run="{failed_id}"]', timeout=WAIT_MS)
            page.wait_for_function(f"() => document.querySelectorAll('{rows}').length === 1", timeout=WAIT_MS)
            assert page.inner_text("#runs-page") == "page 1 of failed runs"
            seen = page.evaluate("window.__answers")
            page.wait_for_function(f"() => window.__answers >= {seen + 2}", timeout=WAIT_MS)  # a poll
            kept = page.evaluate(
                f"""() => [document.activeElement.id, document.getElementById("status-filter").value,
                          [...document.querySelectorAll('{rows}')].map((r) => r.dataset.run)]"""
            )
            assert kept == ["status-filter", "failed", [failed_id]], kept
        finally:
            context.close()


# --------------------------------------------------------------------------- every status drawn


def test_a_step_interrupted_by_a_crash_is_drawn_in_its_own_colour_counted_done_and_in_the_legend(
    browser: Any, tmp_path: Path
) -> None:
    # A step interrupted by a crash was drawn in the grey of a step never run, counted as not done, and
    # the legend had no entry for it.
    from codomyrmex_orchestration.core.models import TaskStatus, WorkflowStatus

    gate = tmp_path / "gate"
    spec = {
        "name": "crashy",
        "steps": [
            {"name": "s1", "module": "core", "action": "echo", "parameters": {"message": 1}},
            {**mixed_workflow(gate)["steps"][3], "name": "s2", "dependencies": ["s1"]},
            {
                "name": "s3",
                "module": "core",
                "action": "echo",
                "parameters": {"message": 3},
                "dependencies": ["s2"],
            },
        ],
    }
    root = tmp_path / "crash"
    context = browser.new_context()
    try:
        page = context.new_page()
        with served(root, ["--allow-shell"], {"CODOMYRMEX_AUTH_TOKEN": TOKEN}) as first:
            run_id = start_run(first, spec)
            sign_in(page, first.base, TOKEN)
            page.goto(f"{first.base}/ui/#/runs/{run_id}")
            page.wait_for_selector(node(page, "s2", "running"), timeout=WAIT_MS)
            first.proc.kill()  # SIGKILL: no clean shutdown, the run stays "running" in the store
            first.proc.wait()
        with served(root, ["--allow-shell"], {"CODOMYRMEX_AUTH_TOKEN": TOKEN}) as second:
            # the cookie is per host, not per port: still signed in
            page.goto(f"{second.base}/ui/#/runs/{run_id}")
            page.wait_for_selector(node(page, "s2", "interrupted"), timeout=WAIT_MS)
            stroke = page.get_attribute(node(page, "s2", "interrupted") + " rect", "stroke")
            assert stroke == "var(--interrupted)"
            assert page.get_attribute("#meta", "data-progress") == "2/3"
            shot(page, "run-view-interrupted")
            legend = page.locator(".legend [data-statuses]")
            listed = " ".join(
                legend.nth(i).get_attribute("data-statuses") or "" for i in range(legend.count())
            )
            for status in [*TaskStatus, *WorkflowStatus]:
                assert status.value in listed.split(), status
            # each legend colour is its own: none but pending's is the grey of a step never run
            colours = page.eval_on_selector_all(
                ".legend .badge", "(all) => all.map((b) => getComputedStyle(b).backgroundColor)"
            )
            assert len(set(colours)) == len(colours), colours
    finally:
        gate.touch()
        context.close()


# --------------------------------------------------------------------------- map steps


def test_a_map_step_shows_its_item_counts_and_lists_its_failed_items_page_by_page(
    browser: Any, server: Served
) -> None:
    # A map step with 50 failed items of 150 was a green "completed" box whose details never said so.
    spec = {
        "name": "mapped",
        "steps": [
            {
                "name": "bad",
                "module": "core",
                "action": "fail",
                "for_each": [{"i": n, "f": n % 3 == 0} for n in range(150)],
                "required": False,
                "run_if": "item.f == true",
                "parameters": {"message": "item {{item.i}} broke"},
            }
        ],
    }
    assert not mcp_call(server.url, "create_workflow", {**spec, "overwrite": True}, AUTH).is_error
    ran = mcp_call(server.url, "execute_workflow", {"workflow_name": "mapped", "wait": True}, AUTH)
    run_id = ran.structured_content["run_id"]
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, server.base, TOKEN)
        page.goto(f"{server.base}/ui/#/runs/{run_id}")
        page.wait_for_selector(node(page, "bad", "completed"), timeout=WAIT_MS)
        assert page.text_content('g.node[data-step="bad"] text.items') == "150 items · 50 failed"
        page.click('g.node[data-step="bad"]')
        assert page.inner_text("#step-items") == "150 items: 50 failed, 100 skipped"
        assert "Output left out" in page.inner_text("#step-output-omitted")
        page.wait_for_selector("#failed-items h4", timeout=WAIT_MS)
        assert page.inner_text("#failed-items h4") == "Failed items 1 to 20 of 50"
        first = page.locator("#failed-items li").first.inner_text()
        assert first.startswith("#0 failed") and "item 0 broke" in first
        page.click("#items-next")
        page.wait_for_selector("#failed-items h4:has-text('21 to 40')", timeout=WAIT_MS)
        page.click("#items-next")
        page.wait_for_selector("#failed-items h4:has-text('41 to 50 of 50')", timeout=WAIT_MS)
        assert page.locator("#failed-items li").count() == 10
        assert page.locator("#items-next").count() == 0
        assert page.locator("#failed-items li").last.get_attribute("data-item") == "147"
        shot(page, "run-view-map-failed-items")
        page.click("#items-previous")
        page.wait_for_selector("#failed-items h4:has-text('21 to 40')", timeout=WAIT_MS)
    finally:
        context.close()


# --------------------------------------------------------------------------- questions


def test_a_run_waiting_for_a_person_shows_the_question_the_step_asking_it_and_how_to_answer(
    browser: Any, server: Served
) -> None:
    # The run was waiting_for_input; the page drew the asking step as "running" and showed the question
    # nowhere.
    question = "Deploy <b>2.1</b> to production?"  # shown as text, never as markup
    spec = {
        "name": "asks",
        "steps": [
            {"name": "plan", "module": "core", "action": "echo", "parameters": {"message": 1}},
            {"name": "approve", "module": "core", "action": "approve", "parameters": {"message": question}},
            {
                "name": "ship",
                "module": "core",
                "action": "echo",
                "parameters": {"message": 2},
                "dependencies": ["approve"],
            },
        ],
    }
    run_id = start_run(server, spec)
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, server.base, TOKEN)
        page.goto(f"{server.base}/ui/#/runs/{run_id}")
        page.wait_for_selector(node(page, "approve", "waiting"), timeout=WAIT_MS)
        assert page.get_attribute(node(page, "approve", "waiting") + " rect", "stroke") == "var(--waiting)"
        page.wait_for_selector('#status [data-run-status="waiting_for_input"]', timeout=WAIT_MS)
        asks = page.inner_text('#pending-inputs li[data-asks="approve"]')
        assert asks == f"step approve asks: {question}"
        assert page.locator("#pending-inputs b").count() == 0
        assert "respond_to_run" in page.inner_text("#pending-inputs")
        page.click('g.node[data-step="approve"]')
        assert page.inner_text("#step-question") == f"Asks: {question}"
        shot(page, "run-view-waiting-for-input")
    finally:
        mcp_call(server.url, "cancel_workflow_run", {"run_id": run_id}, AUTH)
        context.close()


def test_loading_the_page_puts_no_error_in_the_console(browser: Any, server: Served) -> None:
    # Every load asked for /favicon.ico: a 404 (401 with a token) logged as an error in the console.
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, server.base, TOKEN)
        errors: list[str] = []
        refused: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("response", lambda answer: refused.append(answer.url) if answer.status >= 400 else None)
        page.goto(f"{server.base}/ui/")
        page.wait_for_selector("#main h2", timeout=WAIT_MS)
        page.wait_for_load_state("networkidle", timeout=WAIT_MS)  # the icon is asked for after load
        assert errors == [] and refused == [], (errors, refused)
    finally:
        context.close()


def test_a_time_of_another_day_is_shown_with_its_date(browser: Any, server: Served) -> None:
    # Times were shown as the time of day only: runs of two days could not be told apart in the list.
    context = browser.new_context(locale="en-US", timezone_id="UTC")
    try:
        page = context.new_page()
        sign_in(page, server.base, TOKEN)
        page.goto(f"{server.base}/ui/")
        page.wait_for_selector("#main h2", timeout=WAIT_MS)
        assert "2020" in page.evaluate("when('2020-03-04T05:06:07Z')")
        today = page.evaluate("when(new Date().toISOString())")
        assert today and str(datetime.now(UTC).year) not in today  # today: the time of day alone
    finally:
        context.close()


# --------------------------------------------------------------------------- keyboard and contrast

#: WCAG's contrast ratio of an element's text colour on its background colour (both opaque rgb()).
CONTRAST = """(e) => {
  const lum = (css) => {
    const [r, g, b] = css.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number).map((v) => {
      v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const style = getComputedStyle(e);
  const [a, b] = [lum(style.color), lum(style.backgroundColor)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


def test_steps_are_buttons_a_keyboard_selects_with_a_visible_focus_and_badges_are_readable(
    browser: Any, server: Served
) -> None:
    # Tab reached a node but Enter and Space did nothing, the focused node looked like the others, the
    # graph was one image to a screen reader, and white on four badge colours was under 4.5:1.
    assert not mcp_call(server.url, "create_workflow", one_step("keys", "k1", "k2"), AUTH).is_error
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, server.base, TOKEN)
        page.evaluate("location.hash = '#/workflows/keys'")
        page.wait_for_selector(node(page, "k2", "defined"), timeout=WAIT_MS)
        assert page.get_attribute("svg#dag", "role") != "img"
        assert page.get_attribute('g.node[data-step="k1"]', "role") == "button"
        assert page.get_attribute('g.node[data-step="k1"]', "aria-label") == "step k1: defined"
        page.focus('g.node[data-step="k1"]')
        page.keyboard.press("Tab")  # keyboard focus: :focus-visible applies
        assert page.evaluate("document.activeElement.dataset.step") == "k2"
        widths = page.eval_on_selector_all(
            "g.node rect", "(all) => all.map((r) => getComputedStyle(r).strokeDasharray)"
        )
        assert widths[0] != widths[1], widths  # the focused node is drawn apart
        page.keyboard.press("Enter")
        page.wait_for_selector("#details h3:has-text('k2')", timeout=WAIT_MS)
        assert page.get_attribute('g.node[data-step="k2"]', "aria-pressed") == "true"
        page.keyboard.press("Shift+Tab")
        page.keyboard.press(" ")
        page.wait_for_selector("#details h3:has-text('k1')", timeout=WAIT_MS)
        ratios = page.eval_on_selector_all(".legend .badge", f"(all) => all.map({CONTRAST})")
        names = page.eval_on_selector_all(".legend .badge", "(all) => all.map((b) => b.textContent)")
        low = {n: round(r, 2) for n, r in zip(names, ratios, strict=True) if r < 4.5}
        assert low == {}, low
    finally:
        context.close()
