// Headless Chromium against the real binary: the two WebSocket test pages, used the way a
// person uses them. Run by scripts/browser-ws-test.sh (which builds the binary and installs
// Chromium and playwright-core first).
//
// The server runs in a fresh temp dir with no database reachable (DB_PORT points at nothing):
// the contract keeps WebSocket messaging working in degraded mode, and these pages need nothing
// else. Screenshots: docs/screenshots/ with UPDATE_SCREENSHOTS=1, target/browser-ws-screenshots/
// otherwise.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../..");
const BIN = process.env.ADCLUSTER_BIN || join(repo, "target/debug/adcluster");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
// The screenshots of docs/ are refreshed on request (UPDATE_SCREENSHOTS=1), so a test run leaves
// the working tree clean; otherwise they go under target/.
const SHOTS = process.env.UPDATE_SCREENSHOTS === "1"
  ? join(repo, "docs/screenshots")
  : join(repo, process.env.CARGO_TARGET_DIR || "target", "browser-ws-screenshots");
const TIMEOUT = 10_000;

let server;
let browser;
const contexts = [];

/** Start `adcluster serve` on a free port; resolves with its base URL once it listens. */
function startServer() {
  const dir = mkdtempSync(join(tmpdir(), "adc-browser-ws-"));
  const child = spawn(BIN, ["serve", "--host", "127.0.0.1", "--port", "0"], {
    cwd: dir,
    env: {
      PATH: process.env.PATH,
      DB_HOST: "127.0.0.1",
      DB_PORT: "9", // nothing listens: degraded mode, messaging still works
      DATA_DIR: join(dir, "data"),
      UPLOAD_DIR: join(dir, "uploads"),
      BACKUP_DIR: join(dir, "backups"),
      WORKERS: "8",
      LOG_LEVEL: "info",
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  return new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not start:\n" + log)), 30_000);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const m = log.match(/listening on (http:\/\/[0-9.:]+)/);
      if (m && timer) {
        clearTimeout(timer);
        resolveUrl({ url: m[1], child, dir, log: () => log });
      }
    });
    child.on("exit", (code) => reject(new Error(`the server exited (${code}):\n${log}`)));
  });
}

before(async () => {
  server = await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // playwright gives every launch a fresh temporary --user-data-dir of its own.
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  if (browser) await browser.close();
  if (server) {
    server.child.kill("SIGTERM");
    rmSync(server.dir, { recursive: true, force: true });
  }
});

/** A page in its own browser context (like a separate person), at 1400×860. */
async function newPage(path) {
  const ctx = await browser.newContext({ viewport: { width: 1400, height: 860 } });
  contexts.push(ctx);
  const page = await ctx.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  page.jsErrors = errors;
  await page.goto(server.url + path);
  return page;
}

/** Open the group page and connect as `id` in `group`. */
async function groupPage(id, group) {
  const page = await newPage("/group_messaging_test.html");
  await page.fill("#client-id", id);
  await page.fill("#group", group);
  await page.click("#connect");
  await page.waitForSelector("#status.open");
  await page.waitForSelector(`#members li[data-member="${id}"]`);
  return page;
}

async function members(page) {
  return page.$$eval("#members li[data-member]", (lis) => lis.map((li) => li.dataset.member).sort());
}

async function waitForMembers(page, want) {
  const expected = [...want].sort().join(",");
  await page.waitForFunction(
    (exp) => [...document.querySelectorAll("#members li[data-member]")].map((li) => li.dataset.member).sort().join(",") === exp,
    expected,
  );
  assert.deepEqual(await members(page), [...want].sort());
}

async function say(page, text) {
  await page.fill("#message", text);
  await page.press("#message", "Enter");
}

/** Wait for a chat bubble of `type` (group, private, sent, broadcast) holding `text`. */
async function waitForBubble(page, type, text) {
  await page.waitForFunction(
    ([t, x]) => [...document.querySelectorAll(`#transcript .msg[data-type="${t}"] .body`)].some((b) => b.textContent === x),
    [type, text],
  );
}

async function transcriptText(page) {
  return page.$eval("#transcript", (t) => t.textContent);
}

async function closeAll(...pages) {
  for (const p of pages) {
    assert.deepEqual(p.jsErrors, [], "no JavaScript errors on the page");
    await p.context().close();
  }
}

test("two group pages join one group and see each other's messages", async () => {
  const alice = await groupPage("alice", "room");
  const bob = await groupPage("bob", "room");
  await waitForMembers(alice, ["alice", "bob"]);
  await waitForMembers(bob, ["alice", "bob"]);
  await say(bob, "hello from bob");
  await waitForBubble(alice, "group", "hello from bob");
  await waitForBubble(bob, "group", "hello from bob");
  await say(alice, "hi bob, alice here");
  await waitForBubble(bob, "group", "hi bob, alice here");
  assert.equal(await bob.$eval('#transcript .msg[data-type="group"][data-from="alice"] .meta b', (b) => b.textContent), "alice");
  // Both see the group, with two members, in the live group list.
  await alice.waitForSelector('#groups li[data-group="room"] .count:text("2")');
  await closeAll(alice, bob);
});

test("a private message reaches only its recipient", async () => {
  const alice = await groupPage("p-alice", "priv");
  const bob = await groupPage("p-bob", "priv");
  const carol = await groupPage("p-carol", "priv");
  await waitForMembers(alice, ["p-alice", "p-bob", "p-carol"]);
  // Click bob in the member list: the composer switches to a private message.
  await alice.click('#members li[data-member="p-bob"]');
  await alice.waitForSelector("#private-chip.show");
  await say(alice, "a secret for bob");
  await waitForBubble(bob, "private", "a secret for bob");
  await waitForBubble(alice, "sent", "a secret for bob");
  // Back to the group; a marker sent after the secret reaches carol, so the secret would have too.
  await alice.click("#private-clear");
  await say(alice, "marker after the secret");
  await waitForBubble(carol, "group", "marker after the secret");
  await waitForBubble(bob, "group", "marker after the secret");
  assert.ok(!(await transcriptText(carol)).includes("a secret for bob"), "carol must not see the private message");
  await closeAll(alice, bob, carol);
});

test("the member list follows joins and leaves", async () => {
  const alice = await groupPage("m-alice", "members");
  await waitForMembers(alice, ["m-alice"]);
  const bob = await groupPage("m-bob", "members");
  await waitForMembers(alice, ["m-alice", "m-bob"]);
  const carol = await groupPage("m-carol", "members");
  await waitForMembers(alice, ["m-alice", "m-bob", "m-carol"]);
  await waitForMembers(carol, ["m-alice", "m-bob", "m-carol"]);
  // bob disconnects with the button (a close frame).
  await bob.click("#disconnect");
  await waitForMembers(alice, ["m-alice", "m-carol"]);
  // carol's tab goes away (no close handshake from the page's code).
  await carol.context().close();
  await waitForMembers(alice, ["m-alice"]);
  assert.match(await transcriptText(alice), /m-bob left members/);
  assert.match(await transcriptText(alice), /m-carol left members/);
  // alice moves to another group from the group box; her list is rebuilt.
  await alice.fill("#new-group", "elsewhere");
  await alice.click("#join-new");
  await alice.waitForFunction(() => document.querySelector("#chat-title").textContent === "# elsewhere");
  await waitForMembers(alice, ["m-alice"]);
  await closeAll(alice, bob);
});

test("the socket test page sends every command and tells frame types apart", async () => {
  const other = await groupPage("s-bob", "lab");
  const page = await newPage("/socket_test.html");
  // An invalid id is caught before connecting.
  await page.fill("#client-id", "bad id");
  await page.click("#connect");
  await page.waitForSelector("#conn-notice.show.error");
  await page.fill("#client-id", "s-tester");
  await page.fill("#group", "lab");
  await page.click("#connect");
  await page.waitForSelector("#status.open");
  const badge = (type) => page.waitForSelector(`#log .entry[data-type="${type}"]`);
  await badge("welcome");
  assert.match(await page.textContent("#me-line"), /s-tester.*lab/);

  await page.fill("#to", "s-bob");
  await page.fill("#to-message", "hello bob");
  await page.click("#btn-send-to");
  await badge("sent");
  await waitForBubble(other, "private", "hello bob");
  await page.fill("#group-message", "hello lab");
  await page.click("#btn-group");
  await badge("group");
  await page.click("#btn-groups");
  await badge("groups");
  await page.click("#btn-members");
  await badge("members");
  assert.match(await page.textContent("#members-view"), /s-bob, s-tester/);
  await page.fill("#raw", "{not json");
  await page.click("#btn-raw");
  await badge("error");
  await page.click("#btn-binary");
  await page.waitForFunction(() => [...document.querySelectorAll('#log .entry[data-type="error"]')].some((e) => e.textContent.includes("unsupported")));
  await page.fill("#join-group", "lab2");
  await page.click("#btn-join");
  await badge("joined");
  await page.click("#btn-leave");
  await badge("left");
  await page.fill("#plain", "hello everyone");
  await page.click("#btn-plain");
  await badge("broadcast");
  // The REST panel lists the clients.
  await page.click("#refresh");
  await page.waitForFunction(() => document.querySelector("#client-rows").textContent.includes("s-tester (you)"));
  // Different frame types get different badge colours.
  const colours = await page.$$eval("#log .entry .badge", (bs) => new Set(bs.map((b) => getComputedStyle(b).backgroundColor)).size);
  assert.ok(colours >= 6, `only ${colours} badge colours`);
  // Disconnect: the state says so.
  await page.click("#disconnect");
  await page.waitForSelector("#status.closed");
  await closeAll(page, other);
});

test("a page learns it was replaced by another connection with its id", async () => {
  const first = await groupPage("dup", "twins");
  const second = await groupPage("dup", "twins");
  await first.waitForSelector("#status.closed");
  await first.waitForSelector("#conn-notice.show.error");
  assert.match(await first.textContent("#conn-notice"), /replaced/i);
  await closeAll(first, second);
});

test("screenshots of both pages in use", async () => {
  const bob = await groupPage("bob", "general");
  const carol = await groupPage("carol", "general");
  const alice = await groupPage("alice", "general");
  await waitForMembers(alice, ["alice", "bob", "carol"]);
  await say(bob, "Morning! The deploy is at 14:00.");
  await waitForBubble(alice, "group", "Morning! The deploy is at 14:00.");
  await say(alice, "Thanks — I'll keep an eye on the dashboards.");
  await waitForBubble(alice, "group", "Thanks — I'll keep an eye on the dashboards.");
  await carol.click('#members li[data-member="alice"]');
  await say(carol, "Could you review my PR before then?");
  await waitForBubble(alice, "private", "Could you review my PR before then?");
  await alice.click('#members li[data-member="carol"]');
  await say(alice, "Sure, send me the link.");
  await waitForBubble(alice, "sent", "Sure, send me the link.");
  await alice.click("#private-clear");
  const dave = await groupPage("dave", "general");
  await waitForMembers(alice, ["alice", "bob", "carol", "dave"]);
  await say(dave, "Joining late, catching up.");
  await waitForBubble(alice, "group", "Joining late, catching up.");
  const ops = await groupPage("erin", "ops");
  await alice.waitForSelector('#groups li[data-group="ops"]');
  await alice.screenshot({ path: join(SHOTS, "group_messaging_test.png") });

  const page = await newPage("/socket_test.html");
  await page.fill("#client-id", "tester");
  await page.fill("#group", "general");
  await page.click("#connect");
  await page.waitForSelector('#log .entry[data-type="welcome"]');
  await page.click("#btn-groups");
  await page.click("#btn-members");
  await page.fill("#to", "alice");
  await page.fill("#to-message", "ping from the test page");
  await page.click("#btn-send-to");
  await say(bob, "Tester, can you see this?");
  await page.fill("#raw", '{"action": "send_to", "to": "nobody", "message": "hi"}');
  await page.click("#btn-raw");
  await page.waitForSelector('#log .entry[data-type="error"]');
  await page.fill("#raw", '{"action": "group", "message": "JSON frames work too"}');
  await page.click("#btn-raw");
  await page.waitForFunction(() => document.querySelectorAll('#log .entry[data-type="group"]').length >= 2);
  await page.click("#refresh");
  await page.waitForFunction(() => document.querySelector("#client-rows").textContent.includes("tester (you)"));
  await page.click('#group-list li[data-group="general"]');
  await page.waitForFunction(() => document.querySelector("#members-view").textContent.includes("REST"));
  await page.screenshot({ path: join(SHOTS, "socket_test.png") });
  await closeAll(page, alice, bob, carol, dave, ops);
});
