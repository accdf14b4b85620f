// The API docs pages in a real browser: /docs (Swagger UI) and /redoc (ReDoc) load from this
// server's vendored assets, list the API, and Swagger UI's Authorize (OAuth2 password flow) plus
// "Try it out" on GET /users/me work against the live server. Screenshots go to SCREENSHOT_DIR.
//
// Builds nothing: it runs the release binary in ADCLUSTER_BIN (scripts/browser-test.sh builds it
// from the committed tree) and checks that it is one: its log says "release build" and every
// /__test/* route is 404 although the server is started with ADCLUSTER_TEST_ROUTES=true. It
// creates its own database (on TEST_PG_URL) and temp dirs, and removes them, and stops the
// server, even when it fails.
//
// Must never: let the browser reach anything but the server under test (every other request is
// blocked and fails the test), print or save the test user's password or a token (the curl line
// holding the token is masked in the screenshot), or touch a database it did not create.
//
// Environment: ADCLUSTER_BIN, TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres),
// CHROMIUM_PATH (default /usr/bin/chromium), SCREENSHOT_DIR (default target/screenshots, so a test
// run leaves the tree clean; SCREENSHOT_DIR=docs/screenshots refreshes the committed ones).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.resolve(ROOT, process.env.ADCLUSTER_BIN || 'target/release/adcluster');
const PG_URL = process.env.TEST_PG_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SHOTS = path.resolve(ROOT, process.env.SCREENSHOT_DIR || 'target/screenshots');
const STEP_TIMEOUT = 60_000;

const EMAIL = 'docs-browser@example.com';
const PASSWORD = randomBytes(12).toString('base64url'); // this run only; never printed

const dbName = `adc_browser_${process.pid}_${randomBytes(3).toString('hex')}`;
const workDir = mkdtempSync(path.join(tmpdir(), 'adc-browser-'));
const profileDir = mkdtempSync(path.join(tmpdir(), 'adc-chromium-'));

// ReDoc's sidebar always loads Redocly's logo from Redocly's CDN (the address is in the bundle).
// The vendored /redoc forbids off-site images (CSP, src/api/docs.rs), so Chromium refuses this
// one before any network request and the logo hides itself. Nothing else may be refused.
const REFUSED_BY_CSP_OK = ['https://cdn.redoc.ly/redoc/logo-mini.svg'];

let server = null; // the child process
let serverLog = '';
let dbCreated = false;
let context = null; // the browser
let base = ''; // http://127.0.0.1:PORT

/** Run psql on the admin URL; throws with psql's message when it fails. */
function psql(sql) {
  const r = spawnSync('psql', [PG_URL, '-v', 'ON_ERROR_STOP=1', '-Atqc', sql], { encoding: 'utf8' });
  if (r.error) throw new Error(`cannot run psql (install postgresql-client): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`psql failed: ${r.stderr.trim()}`);
  return r.stdout;
}

/** The environment for every adcluster command: nothing inherited but PATH. */
function serverEnv() {
  const u = new URL(PG_URL);
  return {
    PATH: process.env.PATH || '/usr/bin:/bin',
    DB_HOST: u.hostname || '127.0.0.1',
    DB_PORT: u.port || '5432',
    DB_USER: decodeURIComponent(u.username) || 'postgres',
    DB_PASSWORD: decodeURIComponent(u.password),
    DB_NAME: dbName,
    DATA_DIR: path.join(workDir, 'data'),
    UPLOAD_DIR: path.join(workDir, 'uploads'),
    BACKUP_DIR: path.join(workDir, 'backups'),
    WORKERS: '8',
    LOG_LEVEL: 'info',
    // Asks for the test routes: a release binary must not have them, whatever this says.
    ADCLUSTER_TEST_ROUTES: 'true',
  };
}

/** Everything this test made, undone; safe to call twice and from the exit handler (sync). */
function cleanupSync() {
  if (server && server.exitCode === null && server.signalCode === null) {
    try {
      server.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  server = null;
  if (dbCreated) {
    try {
      psql(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`);
      dbCreated = false;
    } catch (e) {
      console.error(`warning: could not drop test database ${dbName}: ${e.message}`);
    }
  }
  rmSync(workDir, { recursive: true, force: true });
  rmSync(profileDir, { recursive: true, force: true });
}
process.on('exit', cleanupSync);
for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]]) {
  process.on(sig, () => {
    cleanupSync();
    process.exit(code);
  });
}

/** Start `adcluster serve` on a free port; resolves with the bound port from its log. */
function startServer() {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ['serve', '--host', '127.0.0.1', '--port', '0'], {
      cwd: workDir,
      env: serverEnv(),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    server = child;
    const timer = setTimeout(() => reject(new Error(`server did not report its port in 30 s; log:\n${serverLog}`)), 30_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${BIN}: ${e.message} (build it first: scripts/browser-test.sh does)`));
    });
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`server exited early (code ${code}, signal ${sig}); log:\n${serverLog}`));
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      serverLog += chunk;
      const m = serverLog.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
}

/** Stop the server politely (SIGTERM, it drains), then for good after 10 s. */
async function stopServer() {
  const child = server;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await gone;
  clearTimeout(t);
}

/**
 * Record what a page loads. Requests to anything but the server are blocked (and recorded), so
 * the docs cannot silently fall back to a CDN; failed requests and error responses are recorded.
 */
function watch(page) {
  const seen = { external: [], failed: [], refused: [], errors: [], pageErrors: [], consoleErrors: [], ok: [] };
  page.on('requestfailed', (r) => {
    const why = r.failure()?.errorText;
    if (why === 'csp' && REFUSED_BY_CSP_OK.includes(r.url())) seen.refused.push(r.url());
    else seen.failed.push(`${r.method()} ${r.url()}: ${why}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) seen.errors.push(`${r.request().method()} ${r.url()}: ${r.status()}`);
    else seen.ok.push(r.url());
  });
  page.on('pageerror', (e) => seen.pageErrors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = m.text();
    const refusal = text.includes('Content Security Policy') && REFUSED_BY_CSP_OK.some((u) => text.includes(u));
    if (!refusal) seen.consoleErrors.push(text);
  });
  return seen;
}

/** Every request stayed on the server, none failed, no script error. */
function assertClean(seen) {
  assert.deepEqual(seen.external, [], 'requests that would have left localhost');
  assert.deepEqual(seen.failed, [], 'failed requests');
  assert.deepEqual(seen.errors, [], 'responses with an error status');
  assert.deepEqual(seen.pageErrors, [], 'uncaught errors in the page');
  assert.deepEqual(seen.consoleErrors, [], 'console errors');
}

/** The page's script, stylesheet and icon URLs, absolute. */
async function assetUrls(page) {
  return page.evaluate(() => [...document.querySelectorAll('script[src], link[href]')].map((e) => e.src || e.href));
}

/** Every asset of the page is one of ours, and `must` are among them. */
function assertVendored(assets, must) {
  for (const url of assets) {
    assert.ok(url.startsWith(`${base}/static/vendor/`), `asset not served by us: ${url}`);
  }
  for (const file of must) {
    assert.ok(assets.includes(`${base}/static/vendor/${file}`), `${file} is not loaded; assets: ${assets.join(', ')}`);
  }
}

describe('API docs in headless Chromium', () => {
  before(async () => {
    psql(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`);
    psql(`CREATE DATABASE "${dbName}"`);
    dbCreated = true;
    const made = spawnSync(BIN, ['user', 'create', '--email', EMAIL, '--password', PASSWORD], {
      cwd: workDir,
      env: serverEnv(),
      encoding: 'utf8',
    });
    if (made.error) throw new Error(`cannot run ${BIN}: ${made.error.message} (build it first: scripts/browser-test.sh does)`);
    assert.equal(made.status, 0, `adcluster user create failed: ${made.stderr}`);
    const port = await startServer();
    base = `http://127.0.0.1:${port}`;

    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--no-first-run',
      ],
      viewport: { width: 1280, height: 900 },
      timeout: STEP_TIMEOUT,
    });
    context.setDefaultTimeout(STEP_TIMEOUT);
    mkdirSync(SHOTS, { recursive: true });
  });

  after(async () => {
    if (context) await context.close().catch(() => {});
    context = null;
    await stopServer().catch(() => {});
    cleanupSync();
  });

  /** A new page whose every request off the server is blocked and recorded. */
  async function openPage() {
    const page = await context.newPage();
    const seen = watch(page);
    await page.route('**/*', (route) => {
      const url = route.request().url();
      if (url.startsWith(`${base}/`)) return route.continue();
      seen.external.push(url);
      return route.abort('blockedbyclient');
    });
    return { page, seen };
  }

  it('/docs loads Swagger UI from this server and lists the operations', { timeout: 120_000 }, async () => {
    const { page, seen } = await openPage();
    try {
      const res = await page.goto(`${base}/docs`);
      assert.equal(res.status(), 200);
      assertVendored(await assetUrls(page), ['swagger-ui/swagger-ui-bundle.js', 'swagger-ui/swagger-ui.css']);
      assert.ok(seen.ok.includes(`${base}/static/vendor/swagger-ui/swagger-ui-bundle.js`), 'bundle was loaded');

      await page.locator('.opblock').first().waitFor();
      const ops = await page.locator('.opblock-summary').evaluateAll((els) =>
        els.map((e) => {
          const method = e.querySelector('.opblock-summary-method')?.textContent.trim();
          const p = e.querySelector('.opblock-summary-path')?.getAttribute('data-path');
          return `${method} ${p}`;
        }),
      );
      for (const want of ['GET /users/me', 'POST /auth/login', 'GET /health', 'POST /users/', 'GET /teams/']) {
        assert.ok(ops.includes(want), `${want} is not listed; listed: ${ops.join(', ')}`);
      }
      assertClean(seen);
    } finally {
      await page.close();
    }
  });

  it('Authorize (OAuth2 password flow), then Try it out on GET /users/me answers 200 with the user', { timeout: 120_000 }, async () => {
    const { page, seen } = await openPage();
    try {
      await page.goto(`${base}/docs`);
      await page.locator('.opblock').first().waitFor();

      await page.locator('.auth-wrapper button.authorize').click();
      const dialog = page.locator('.modal-ux');
      await dialog.waitFor();
      await dialog.locator('#oauth_username').fill(EMAIL);
      await dialog.locator('#oauth_password').fill(PASSWORD);
      const login = page.waitForResponse((r) => r.url() === `${base}/auth/login`);
      await dialog.locator('.auth-btn-wrapper button.authorize').click();
      assert.equal((await login).status(), 200, 'POST /auth/login from the Authorize dialog');
      // Authorized: the dialog says so and offers Logout instead of Authorize.
      await dialog.locator('h6', { hasText: 'Authorized' }).waitFor();
      await dialog.getByRole('button', { name: 'Remove authorization' }).waitFor();
      await dialog.locator('.auth-btn-wrapper button.btn-done').click();
      await dialog.waitFor({ state: 'detached' });

      const op = page.locator('.opblock.opblock-get').filter({
        has: page.locator('.opblock-summary-path[data-path="/users/me"]'),
      });
      await op.locator('.opblock-summary').first().click();
      await op.locator('button.try-out__btn').click();
      const me = page.waitForResponse((r) => r.url() === `${base}/users/me`);
      await op.locator('button.execute').click();
      assert.equal((await me).status(), 200, 'GET /users/me sent by Try it out');

      const live = op.locator('.live-responses-table');
      await live.waitFor();
      const status = (await live.locator('.response .response-col_status').first().textContent()).trim();
      assert.equal(status, '200', 'the response code Swagger UI shows');
      const body = await live.locator('.response-col_description .microlight').first().textContent();
      assert.equal(JSON.parse(body).email, EMAIL, `the body Swagger UI shows: ${body}`);
      assertClean(seen);

      // From the top of the page down to the live response: the operation list, the
      // authorized lock icons and the 200 with the user's body, at full size.
      const box = await live.boundingBox();
      const scroll = await page.evaluate(() => window.scrollY);
      await page.screenshot({
        path: path.join(SHOTS, 'docs.png'),
        fullPage: true,
        clip: { x: 0, y: 0, width: 1280, height: Math.ceil(box.y + scroll + box.height + 24) },
        // The curl example holds the bearer token: it never goes into a saved image.
        mask: [op.locator('.curl-command')],
        maskColor: '#41444e',
      });
    } finally {
      await page.close();
    }
  });

  it('the binary is a release build: no /__test/* route, whatever the environment says', async () => {
    assert.match(serverLog, /starting adcluster \S+ \(release build\)/, `ADCLUSTER_BIN is not a release build; log:\n${serverLog}`);
    assert.match(serverLog, /ADCLUSTER_TEST_ROUTES is ignored: a release build has no test routes/);
    for (const [method, route] of [['GET', '/__test/panic'], ['GET', '/__test/sleep?ms=1'], ['GET', '/__test/hold?ms=1'], ['POST', '/__test/echo']]) {
      const res = await fetch(`${base}${route}`, { method, body: method === 'POST' ? 'x' : undefined });
      assert.equal(res.status, 404, `${method} ${route}`);
      assert.deepEqual(await res.json(), { detail: 'Not Found' }, `${method} ${route}`);
    }
    assert.doesNotMatch(serverLog, /panicked/, 'nothing panicked');
  });

  it('/redoc renders the API from this server', { timeout: 120_000 }, async () => {
    const { page, seen } = await openPage();
    try {
      const res = await page.goto(`${base}/redoc`);
      assert.equal(res.status(), 200);
      assert.match(res.headers()['content-security-policy'] ?? '', /img-src 'self'/, 'the vendored /redoc forbids off-site images');
      assertVendored(await assetUrls(page), ['redoc/redoc.standalone.js']);
      assert.ok(seen.ok.includes(`${base}/static/vendor/redoc/redoc.standalone.js`), 'bundle was loaded');
      const title = page.locator('.api-info h1');
      await title.waitFor();
      assert.match(await title.textContent(), /^Adcluster API\b/);
      // The operations are rendered too, not only the title.
      await page.locator('[data-section-id="operation/read_users_me"]').first().waitFor({ state: 'attached' });
      // The sidebar lists every operation under its tag; opening the `users` tag and clicking
      // an entry leads to that operation's section.
      const sidebar = page.locator('.menu-content');
      await sidebar.waitFor();
      const entries = await sidebar
        .locator('li[data-item-id^="tag/"]')
        .evaluateAll((els) => els.filter((e) => /\/(operation|paths)\//.test(e.getAttribute('data-item-id'))).length);
      const doc = await (await fetch(`${base}/openapi.json`)).json();
      const operations = Object.values(doc.paths).reduce((n, item) => n + Object.keys(item).length, 0);
      assert.equal(entries, operations, 'one sidebar entry per operation of /openapi.json');
      await sidebar.locator('li[data-item-id="tag/users"] > label').click();
      const entry = sidebar.locator('li[data-item-id="tag/users/operation/read_users_me"]');
      await entry.waitFor();
      await entry.click();
      await page.waitForURL(/#tag\/users\/operation\/read_users_me$/);
      assertClean(seen);
      await page.screenshot({ path: path.join(SHOTS, 'redoc.png') });
    } finally {
      await page.close();
    }
  });
});
