// The TypeScript SDK's client driving this server's MCP tasks (protocol 2025-11-25), for
// tests/e2e/test_tasks_typescript.py. Usage: node tasks_client.cjs stdio <command> [args...] | http <url>
// Prints one JSON object: what callToolStream yielded for a 20-step workflow, the plain call's result,
// what a cancelled task yielded, and tasks/list.
"use strict";
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StdioClientTransport } = require("@modelcontextprotocol/sdk/client/stdio.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");

function chain(name, steps) {
  const listed = [];
  for (let i = 0; i < steps; i++) {
    // A tenth of a second each: the run lasts long enough for polls to see it working.
    const step = { name: `s${i}`, module: "core", action: "sleep", parameters: { seconds: 0.1 } };
    if (i > 0) step.dependencies = [`s${i - 1}`];
    listed.push(step);
  }
  return { name, steps: listed };
}

async function collect(stream, onCreated) {
  const seen = [];
  for await (const message of stream) {
    if (message.type === "taskCreated") {
      seen.push({ type: message.type, taskId: message.task.taskId, status: message.task.status });
      if (onCreated) await onCreated(message.task.taskId);
    } else if (message.type === "taskStatus") {
      seen.push({ type: message.type, status: message.task.status, statusMessage: message.task.statusMessage });
    } else if (message.type === "result") {
      seen.push({ type: message.type, structuredContent: message.result.structuredContent, meta: message.result._meta });
    } else {
      seen.push({ type: message.type, error: String(message.error && message.error.message) });
    }
  }
  return seen;
}

async function main() {
  const [mode, ...rest] = process.argv.slice(2);
  const transport =
    mode === "stdio"
      ? new StdioClientTransport({ command: rest[0], args: rest.slice(1), env: process.env, stderr: "inherit" })
      : new StreamableHTTPClientTransport(new URL(rest[0]));
  const client = new Client({ name: "ts-tasks-e2e", version: "1.0.0" });
  await client.connect(transport);
  const statusNotifications = [];
  client.fallbackNotificationHandler = async (notification) => {
    if (notification.method === "notifications/tasks/status") statusNotifications.push(notification.params.status);
  };
  const out = { protocolVersion: client.getServerVersion() && transport.protocolVersion };
  out.capabilities = client.getServerCapabilities().tasks;
  await client.listTools(); // the client learns which tools may run as tasks (execution.taskSupport)
  await client.callTool({ name: "create_workflow", arguments: chain("chain20", 20) });
  const nap = { name: "nap", module: "core", action: "sleep", parameters: { seconds: 60 } };
  await client.callTool({ name: "create_workflow", arguments: { name: "naps", steps: [nap] } });

  const plain = await client.callTool({ name: "execute_workflow", arguments: { workflow_name: "chain20" } });
  out.plain = plain.structuredContent;
  out.run = await collect(
    client.experimental.tasks.callToolStream({ name: "execute_workflow", arguments: { workflow_name: "chain20" } })
  );
  let cancelled = null;
  out.cancel = await collect(
    client.experimental.tasks.callToolStream({ name: "execute_workflow", arguments: { workflow_name: "naps" } }),
    async (taskId) => {
      cancelled = await client.experimental.tasks.cancelTask(taskId);
    }
  );
  out.cancelled = cancelled && cancelled.status;
  const listed = await client.experimental.tasks.listTasks();
  out.listed = listed.tasks.map((t) => ({ taskId: t.taskId, status: t.status }));
  out.statusNotifications = statusNotifications;
  await client.close();
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((error) => {
  process.stderr.write(String((error && error.stack) || error) + "\n");
  process.exit(1);
});
