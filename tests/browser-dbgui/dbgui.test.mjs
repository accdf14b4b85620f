// Headless Chromium against the real binary: the database GUI page (`adcluster db-gui`), used
// the way a person uses it, at 1280×800. Run by scripts/browser-dbgui-test.sh (which builds the
// binary and installs Chromium and playwright-core first).
//
// A fresh database (on TEST_PG_URL, default postgres://postgres@127.0.0.1:5432/postgres) holds a
// few tables; db-gui runs on a free port in a temp dir. Every request the page makes is recorded:
// none may leave the GUI's origin. Screenshots: docs/screenshots/ with UPDATE_SCREENSHOTS=1,
// target/browser-dbgui-screenshots/ otherwise. To see why a run failed: DBGUI_DUMP_LOG=1 prints
// every request of the page, its console and the GUI's log (DBGUI_LOG_LEVEL=debug adds the
// statements, which makes the last test fail on purpose: they must not be logged at info).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../..");
const BIN = process.env.ADCLUSTER_BIN || join(repo, "target/debug/adcluster");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.UPDATE_SCREENSHOTS === "1"
  ? join(repo, "docs/screenshots")
  : join(repo, process.env.CARGO_TARGET_DIR || "target", "browser-dbgui-screenshots");
// Generous: the machine that runs the suite may be busy compiling.
const TIMEOUT = 30_000;
const ADMIN = new URL(process.env.TEST_PG_URL || "postgres://postgres@127.0.0.1:5432/postgres");
const DB = `adc_browser_dbgui_${process.pid}`;

let gui;
let browser;
let ctx;
let page;
const offOrigin = [];
const jsErrors = [];

function psql(db, sql) {
  return execFileSync("psql", ["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", ADMIN.hostname, "-p", ADMIN.port || "5432",
    "-U", decodeURIComponent(ADMIN.username || "postgres"), "-d", db, "-c", sql], {
    env: { ...process.env, PGPASSWORD: decodeURIComponent(ADMIN.password || "") },
    encoding: "utf8",
  });
}

const SCHEMA = `
CREATE TABLE sales (id serial PRIMARY KEY, region text NOT NULL, month date NOT NULL, amount numeric(12,2), note text);
INSERT INTO sales (region, month, amount, note)
  SELECT r, date '2024-01-01' + (m || ' month')::interval, round((100 + 37 * m + 11 * length(r))::numeric, 2),
         CASE WHEN m = 3 THEN NULL ELSE 'note ' || m END
  FROM unnest(ARRAY['north', 'south', 'east', 'west']) r, generate_series(0, 11) m;
CREATE TABLE "Weird Table" (id int PRIMARY KEY, "Odd ""Name""" text, doc jsonb, long_text text, tags text[]);
INSERT INTO "Weird Table" VALUES
  (1, 'a,b', '{"k": [1, 2]}', repeat('long text ', 60), '{x,y}'),
  (2, NULL, NULL, 'short', NULL),
  (3, 'say "hi"', '{"nested": {"ok": true}}', E'line one\\nline two', '{}');
CREATE INDEX sales_region ON sales (region);
CREATE VIEW sales_by_region AS SELECT region, sum(amount) AS total FROM sales GROUP BY region;
`;

/** Start `adcluster db-gui --port 0`; resolves once it printed its line. */
function startGui() {
  const dir = mkdtempSync(join(tmpdir(), "adc-browser-dbgui-"));
  const child = spawn(BIN, ["db-gui", "--port", "0"], {
    cwd: dir,
    env: {
      PATH: process.env.PATH,
      DB_HOST: ADMIN.hostname,
      DB_PORT: ADMIN.port || "5432",
      DB_USER: decodeURIComponent(ADMIN.username || "postgres"),
      DB_PASSWORD: decodeURIComponent(ADMIN.password || ""),
      DB_NAME: DB,
      DATA_DIR: join(dir, "data"),
      LOG_LEVEL: process.env.DBGUI_LOG_LEVEL || "info",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let log = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (c) => { log += c; });
  return new Promise((resolveGui, reject) => {
    const timer = setTimeout(() => reject(new Error("db-gui did not start:\n" + log)), 30_000);
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/^db-gui: (http:\/\/[0-9.:]+)\/\?token=([0-9a-f]+)\n/);
      if (m && timer) {
        clearTimeout(timer);
        resolveGui({ base: m[1], link: `${m[1]}/?token=${m[2]}`, token: m[2], child, dir, log: () => log });
      }
    });
    child.on("exit", (code) => reject(new Error(`db-gui exited (${code}):\n${log}`)));
  });
}

before(async () => {
  psql("postgres", `DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  psql("postgres", `CREATE DATABASE ${DB}`);
  psql(DB, SCHEMA);
  gui = await startGui();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
  mkdirSync(SHOTS, { recursive: true });
  ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  ctx.on("request", (req) => {
    const url = req.url();
    if (!url.startsWith(gui.base + "/") && !url.startsWith("blob:") && !url.startsWith("data:")) offOrigin.push(url);
  });
  page = await ctx.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("pageerror", (e) => jsErrors.push(String(e)));
  if (process.env.DBGUI_DUMP_LOG === "1") {
    const t0 = Date.now();
    page.on("request", (r) => console.log(`NET ${Date.now() - t0} start ${r.method()} ${r.url()}`));
    page.on("requestfinished", (r) => console.log(`NET ${Date.now() - t0} done ${r.method()} ${r.url()}`));
    page.on("requestfailed", (r) => console.log(`NET ${Date.now() - t0} FAILED ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
    page.on("console", (m) => console.log(`CONSOLE ${m.type()} ${m.text()}`));
  }
});

after(async () => {
  if (process.env.DBGUI_DUMP_LOG === "1" && gui) console.log("DIAG log:\n" + gui.log());
  if (browser) await browser.close();
  if (gui) {
    gui.child.kill("SIGTERM");
    rmSync(gui.dir, { recursive: true, force: true });
  }
  try { psql("postgres", `DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`); } catch { /* already gone */ }
});

const shot = (name) => page.screenshot({ path: join(SHOTS, `dbgui-${name}.png`) });

async function runSql(sql) {
  await page.click("#tab-btn-sql");
  await page.fill("#sql", sql);
  await page.press("#sql", "Control+Enter");
}

async function waitRows(n) {
  await page.waitForFunction((k) => document.querySelectorAll("#result-grid table.grid tbody tr").length === k, n);
}

test("opening the link signs in, drops the token from the address bar, and shows the read-only badge", async () => {
  // Without the token, the page says how to sign in.
  await page.goto(gui.base + "/");
  await page.waitForSelector("#signin:not([hidden])");
  await page.goto(gui.link);
  await page.waitForSelector("#mode.ro");
  assert.equal(await page.textContent("#mode"), "read-only");
  assert.equal(new URL(page.url()).search, "", "the token is gone from the address bar");
  assert.ok(await page.isHidden("#signin"));
  const cookies = await ctx.cookies();
  const c = cookies.find((k) => k.name === "adcluster_dbgui");
  assert.ok(c && c.httpOnly && c.sameSite === "Strict", JSON.stringify(cookies));
  assert.match(await page.textContent("#dbname"), new RegExp(DB));
});

test("browsing a table: data with paging, NULLs, long values, and its structure", async () => {
  await page.waitForSelector('.table-item[data-name="Weird Table"]');
  const names = await page.$$eval(".table-item", (els) => els.map((e) => e.dataset.name));
  assert.deepEqual(names, ["sales", "sales_by_region", "Weird Table"]);
  await page.click('.table-item[data-name="Weird Table"]');
  await page.waitForFunction(() => document.querySelectorAll("#data-grid tbody tr").length === 3);
  assert.equal(await page.textContent("#page-info"), "Rows 1–3 of 3");
  assert.equal(await page.$$eval("#data-grid td .null", (n) => n.length), 3, "NULL shown as NULL");
  // A long value is cut in the grid and whole on demand.
  const long = await page.$("#data-grid td.long");
  assert.ok(long);
  await long.click();
  await page.waitForSelector("#cell-dialog[open]");
  assert.equal(await page.textContent("#cell-value"), "long text ".repeat(60));
  await shot("cell");
  await page.keyboard.press("Escape");
  await page.waitForFunction(() => !document.querySelector("#cell-dialog").open);
  await shot("data");

  // Paging through a bigger table.
  await page.click('.table-item[data-name="sales"]');
  await page.selectOption("#page-size", "50");
  await page.waitForFunction(() => document.querySelector("#page-info").textContent === "Rows 1–48 of 48");
  // A click on a header sorts the table by it; a second one reverses.
  const firstAmount = () => page.$eval("#data-grid tbody tr:first-child td:nth-child(5)", (td) => td.textContent);
  await page.click('#data-grid th:has-text("amount")');
  await page.waitForFunction(() => document.querySelector('#data-grid th[aria-sort="ascending"]'));
  const lowest = await firstAmount();
  await page.click('#data-grid th:has-text("amount")');
  await page.waitForFunction(() => document.querySelector('#data-grid th[aria-sort="descending"]'));
  assert.ok(Number(await firstAmount()) > Number(lowest), "descending starts higher");

  await page.click('.table-item[data-name="Weird Table"]');
  await page.click("#tab-btn-structure");
  await page.waitForFunction(() => document.querySelector("#structure h2")?.textContent === "public.Weird Table");
  const cols = await page.$$eval("#structure table.plain:first-of-type tbody tr td:first-child code", (c) => c.map((x) => x.textContent));
  assert.deepEqual(cols, ["id", 'Odd "Name"', "doc", "long_text", "tags"]);
  assert.match(await page.textContent("#structure"), /Weird Table_pkey/);
  await shot("structure");
});

test("running a query with Ctrl+Enter shows a grid; a failing one shows PostgreSQL's error by the editor", async () => {
  await runSql("SELECT id, region, month, amount, note FROM sales ORDER BY id");
  await waitRows(48);
  assert.match(await page.textContent("#status"), /48 rows/);
  const header = await page.$$eval("#result-grid th", (t) => t.map((x) => x.childNodes[0].textContent));
  assert.deepEqual(header, ["#", "id", "region", "month", "amount", "note"]);
  assert.equal(await page.$$eval("#result-grid td .null", (n) => n.length), 4);
  await shot("query");

  // Explain shows the plan, not the rows.
  await page.click("#explain");
  await page.waitForFunction(() => document.querySelector("#result-grid th:nth-child(2)")?.childNodes[0].textContent === "QUERY PLAN");
  assert.match(await page.textContent("#result-grid"), /Sort|Index Scan|Seq Scan/);

  await runSql("SELECT nosuch\nFROM sales");
  await page.waitForSelector("#error:not([hidden])");
  const err = await page.textContent("#error");
  assert.match(err, /column "nosuch" does not exist/);
  assert.match(err, /LINE 1: SELECT nosuch/);
  await shot("error");
});

test("a long statement can be cancelled with Esc", async () => {
  await runSql("SELECT pg_sleep(30)");
  await page.waitForSelector("#cancel:not([hidden])");
  await page.keyboard.press("Escape");
  await page.waitForSelector("#error:not([hidden])", { timeout: 10_000 });
  assert.match(await page.textContent("#error"), /canceling statement due to user request/);
  assert.ok(await page.isHidden("#cancel"));
});

test("a write is refused with the GUI's read-only message", async () => {
  await runSql("DELETE FROM sales WHERE region = 'north'");
  await page.waitForSelector("#error:not([hidden])");
  assert.match(await page.textContent("#error"), /read-only/);
  assert.equal(psql(DB, "SELECT count(*) FROM sales").trim(), "48");
  await shot("write-refused");
});

test("bar, line and pie charts have one mark per row", async () => {
  await runSql("SELECT to_char(month, 'YYYY-MM') AS month, sum(amount) AS total FROM sales GROUP BY 1 ORDER BY 1");
  await waitRows(12);
  await page.click("#view-chart");
  await page.selectOption("#chart-x", "month");
  await page.selectOption("#chart-y", "total");
  for (const [type, mark] of [["bar", "rect.bar"], ["line", "circle.point"], ["pie", "path.slice"]]) {
    await page.selectOption("#chart-type", type);
    await page.waitForFunction(([m, n]) => document.querySelectorAll(`#chart-scroll svg ${m}`).length === n, [mark, 12]);
    if (type !== "pie") {
      const text = await page.textContent("#chart-scroll svg");
      assert.match(text, /month/, "x axis title");
      assert.match(text, /total/, "y axis title");
    }
    assert.ok((await page.$$("#legend li")).length >= 1, "a legend");
    await shot(`chart-${type}`);
  }
  // A few hundred points stay one mark each.
  await runSql("SELECT g AS n, (g * g) % 97 AS v FROM generate_series(1, 300) g");
  await page.waitForFunction(() => /300 rows/.test(document.querySelector("#status").textContent)).catch(async (e) => {
    console.log("DIAG status:", await page.textContent("#status"), "error:", await page.textContent("#error"), "sql:", await page.inputValue("#sql"));
    console.log("DIAG log:", gui.log().slice(-3000));
    throw e;
  });
  await page.waitForFunction(() => document.querySelectorAll("#chart-scroll svg circle.point, #chart-scroll svg path.slice, #chart-scroll svg rect.bar").length === 300);
  await page.selectOption("#chart-type", "bar");
  await page.selectOption("#chart-x", "n");
  await page.selectOption("#chart-y", "v");
  await page.waitForFunction(() => document.querySelectorAll("#chart-scroll svg rect.bar").length === 300);
  await shot("chart-300");
  await page.click("#view-grid");
});

async function download(button) {
  const [dl] = await Promise.all([page.waitForEvent("download"), page.click(button)]);
  return { name: dl.suggestedFilename(), body: readFileSync(await dl.path()) };
}

test("exports download the whole result as CSV and JSON", async () => {
  const sql = `SELECT id, "Odd ""Name""" AS name, doc, tags FROM "Weird Table" ORDER BY id`;
  await runSql(sql);
  await waitRows(3);
  const csv = await download("#export-csv");
  assert.match(csv.name, /\.csv$/);
  assert.equal(csv.body.toString("utf8"),
    // RFC 4180: CRLF after each record.
    'id,name,doc,tags\r\n1,"a,b","{""k"": [1, 2]}","{x,y}"\r\n2,,,\r\n3,"say ""hi""","{""nested"": {""ok"": true}}",{}\r\n');
  const json = await download("#export-json");
  assert.match(json.name, /\.json$/);
  assert.deepEqual(JSON.parse(json.body.toString("utf8")), [
    { id: 1, name: "a,b", doc: { k: [1, 2] }, tags: ["x", "y"] },
    { id: 2, name: null, doc: null, tags: null },
    { id: 3, name: 'say "hi"', doc: { nested: { ok: true } }, tags: [] },
  ]);
  // The same bytes as the API gives a script with the token.
  for (const [format, file] of [["csv", csv], ["json", json]]) {
    const r = await fetch(`${gui.base}/api/export?format=${format}`, {
      method: "POST", headers: { Authorization: `Bearer ${gui.token}`, "Content-Type": "application/json" }, body: JSON.stringify({ sql }),
    });
    assert.equal(r.status, 200);
    assert.ok(Buffer.from(await r.arrayBuffer()).equals(file.body), `${format} download equals the API's export`);
  }
});

test("a saved query survives a reload and runs again, chart included", async () => {
  await runSql("SELECT region, sum(amount) AS total FROM sales GROUP BY region ORDER BY region");
  await waitRows(4);
  await page.click("#view-chart");
  await page.selectOption("#chart-type", "pie");
  await page.selectOption("#chart-x", "region");
  await page.selectOption("#chart-y", "total");
  await page.waitForFunction(() => document.querySelectorAll("#chart-scroll svg path.slice").length === 4);
  await page.click("#save");
  await page.waitForSelector("#save-dialog[open]");
  await page.fill("#save-name", "Totals by region");
  assert.ok(await page.isChecked("#save-chart"));
  await page.click("#save-ok");
  await page.waitForFunction(() => !document.querySelector("#save-dialog").open);
  await page.click("#view-grid");
  await page.fill("#sql", "SELECT 'the last query' AS kept");
  await page.reload();
  await page.waitForSelector("#mode.ro");
  assert.equal(await page.inputValue("#sql"), "SELECT 'the last query' AS kept", "the editor keeps the last query");
  await page.click("#tab-btn-saved");
  await page.waitForSelector("#saved-list li[data-id]");
  assert.equal(await page.textContent("#saved-list .title"), "Totals by region");
  assert.match(await page.textContent("#saved-list .meta"), /pie chart of total by region/);
  await shot("saved");
  await page.click("#saved-list li[data-id] button.primary");
  await page.waitForFunction(() => document.querySelectorAll("#chart-scroll svg path.slice").length === 4);
  assert.equal(await page.inputValue("#sql"), "SELECT region, sum(amount) AS total FROM sales GROUP BY region ORDER BY region");
  assert.equal(await page.inputValue("#chart-type"), "pie");
  await page.click("#view-grid");
  await waitRows(4);
});

test("the history lists what ran, newest first", async () => {
  await page.click("#tab-btn-history");
  await page.waitForSelector("#history-list li pre");
  const sqls = await page.$$eval("#history-list li pre", (p) => p.map((x) => x.textContent));
  assert.equal(sqls[0], "SELECT region, sum(amount) AS total FROM sales GROUP BY region ORDER BY region");
  assert.ok(sqls.includes("DELETE FROM sales WHERE region = 'north'"));
  assert.match(await page.textContent("#history-list"), /read-only/);
  await shot("history");
  await page.click("#tab-btn-sql");
});

test("no request left the GUI's origin and the page raised no error", async () => {
  assert.deepEqual(offOrigin, []);
  assert.deepEqual(jsErrors, []);
  // Query texts stay out of the log at info.
  assert.ok(!gui.log().includes("sales_by_region") && !gui.log().includes("nosuch"), gui.log());
});
