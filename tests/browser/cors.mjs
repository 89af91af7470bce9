// CORS on the broadcast routes, as a real browser enforces it: headless
// Chromium loads a page from an origin CORS_ALLOWED_ORIGINS lists and one
// from an origin it does not, and each page POSTs broadcasts to the server
// with fetch() (JSON with an apikey header, so the browser sends a
// preflight, and application/octet-stream bytes), while a WebSocket in the
// page is a member of the topic.
//
// Run by tests/tests/rest_routes.rs, with a server running whose
// CORS_ALLOWED_ORIGINS is http://127.0.0.1:ALLOWED_PORT:
//   SERVER_URL     the server, e.g. http://127.0.0.1:4000
//   ALLOWED_PORT   a free port: the allowed page is served from there
//   OTHER_PORT     another free port: the other page
//   CHROMIUM       the browser (default: /usr/bin/chromium, Debian's `chromium`)
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const SERVER_URL = process.env.SERVER_URL;
const ALLOWED_PORT = Number(process.env.ALLOWED_PORT);
const OTHER_PORT = Number(process.env.OTHER_PORT);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
assert.ok(SERVER_URL && ALLOWED_PORT && OTHER_PORT, "set SERVER_URL, ALLOWED_PORT and OTHER_PORT");
assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: run tests/setup.sh (it installs Debian's chromium)`);

const step = (s) => console.log("ok - " + s);

/** A page server: an empty page, so the page's origin is this port's. */
function pageServer(port) {
  const server = createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>app</title>");
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

/**
 * In the page: joins realtime:room over a WebSocket (vsn 2.0.0), POSTs a
 * JSON broadcast and a binary one to the events route under /realtime/v1,
 * and reports each fetch's outcome and what the socket received.
 */
async function inPage(serverUrl) {
  const ws = new WebSocket(serverUrl.replace(/^http/, "ws") + "/socket/websocket?vsn=2.0.0");
  ws.binaryType = "arraybuffer";
  const received = [];
  let joined;
  const joinedP = new Promise((r) => (joined = r));
  ws.onmessage = (e) => {
    if (typeof e.data === "string") {
      const [, ref, topic, event, payload] = JSON.parse(e.data);
      if (ref === "1" && event === "phx_reply") joined(payload.status);
      else if (event === "broadcast") received.push({ topic, json: payload });
    } else {
      received.push({ binary: [...new Uint8Array(e.data)] });
    }
  };
  await new Promise((r) => (ws.onopen = r));
  ws.send(JSON.stringify(["1", "1", "realtime:room", "phx_join", { config: {} }]));
  const status = await joinedP;
  const post = async (body, type) => {
    try {
      const res = await fetch(serverUrl + "/realtime/v1/api/broadcast/room/events/from-page", {
        method: "POST",
        headers: { "content-type": type, apikey: "anon-key" },
        body,
      });
      return { status: res.status, body: await res.text() };
    } catch (e) {
      return { error: String(e) };
    }
  };
  const json = await post(JSON.stringify({ from: location.origin }), "application/json");
  const binary = await post(new Uint8Array([0, 1, 254, 255]), "application/octet-stream");
  await new Promise((r) => setTimeout(r, 1000));
  ws.close();
  return { joined: status, json, binary, received };
}

const pages = [await pageServer(ALLOWED_PORT), await pageServer(OTHER_PORT)];
const profile = mkdtempSync(join(tmpdir(), "realtime-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const page = context.pages()[0] || (await context.newPage());

  const allowed = `http://127.0.0.1:${ALLOWED_PORT}`;
  await page.goto(allowed + "/");
  const a = await page.evaluate(inPage, SERVER_URL);
  assert.equal(a.joined, "ok");
  assert.deepEqual(a.json, { status: 202, body: "{}" }, `the JSON POST from ${allowed}`);
  assert.deepEqual(a.binary, { status: 202, body: "{}" }, `the binary POST from ${allowed}`);
  const topic = [...new TextEncoder().encode("realtime:room")];
  const event = [...new TextEncoder().encode("from-page")];
  assert.deepEqual(a.received, [
    { topic: "realtime:room", json: { type: "broadcast", event: "from-page", payload: { from: allowed } } },
    { binary: [4, topic.length, event.length, 0, 0, ...topic, ...event, 0, 1, 254, 255] },
  ]);
  step(`a page at ${allowed} (listed) broadcasts JSON and bytes with fetch(); its socket gets both`);

  const other = `http://127.0.0.1:${OTHER_PORT}`;
  await page.goto(other + "/");
  const o = await page.evaluate(inPage, SERVER_URL);
  assert.equal(o.joined, "ok");
  assert.match(o.json.error ?? "", /Failed to fetch/, `the JSON POST from ${other}: ${JSON.stringify(o.json)}`);
  assert.match(o.binary.error ?? "", /Failed to fetch/, `the binary POST from ${other}: ${JSON.stringify(o.binary)}`);
  assert.deepEqual(o.received, [], "nothing was sent");
  step(`a page at ${other} (not listed) is blocked by the browser, and nothing is sent`);
  console.log("PASS");
} finally {
  await context?.close();
  for (const p of pages) p.close();
  rmSync(profile, { recursive: true, force: true });
}
