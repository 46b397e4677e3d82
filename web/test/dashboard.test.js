// Real-browser test of the dashboard page (web/dashboard.html) against the real hub binary.
//
// It starts `agentcom serve` on a free loopback port with a fresh data directory, seeds it
// over HTTP (and one agent over the agent websocket, driven from a browser page), and drives
// Debian's Chromium through playwright-core: sign-in, live events, Back up now, Verify,
// actor restart, reload, trend charts updating live, Compact now, viewer role, hub restart
// (reconnect), sign-out.
//
// Run: `node --test web/test/` after `cargo build -p agentcom` and `npm ci` in web/.
// Environment: AGENTCOM_BIN (default target/debug/agentcom), CHROMIUM (default
// /usr/bin/chromium), DASHBOARD_SCREENSHOT (default /tmp/dashboard.png).
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const ROOT = path.resolve(__dirname, '..', '..');
const BIN = process.env.AGENTCOM_BIN || path.join(ROOT, 'target', 'debug', 'agentcom');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.DASHBOARD_SCREENSHOT || '/tmp/dashboard.png';
const CHROMIUM_ARGS = [
  '--no-sandbox', '--headless', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** Start the hub; resolves once it prints `AgentCom listening on http://ADDR`. */
function startHub({ dataDir, adminToken, bind }) {
  const proc = spawn(BIN, [
    'serve', '--bind', bind, '--data-dir', dataDir, '--admin-token', adminToken, '--backup-interval', '1h',
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1', AGENTCOM_LOG: 'warn' } });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error('hub did not start in 15 s:\n' + out + log)); }, 15000);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/AgentCom listening on (http:\/\/\S+)/);
      if (m) { clearTimeout(timer); resolve({ proc, base: m[1].replace(/\/$/, ''), log: () => log }); }
    });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`hub exited (${code}) before listening:\n${out}${log}`)); });
    proc.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

function stopHub(hub) {
  return new Promise((resolve) => {
    if (!hub || hub.proc.exitCode !== null || hub.proc.signalCode !== null) return resolve();
    const t = setTimeout(() => hub.proc.kill('SIGKILL'), 5000);
    hub.proc.once('exit', () => { clearTimeout(t); resolve(); });
    hub.proc.kill('SIGTERM');
  });
}

async function http(base, method, p, token, body) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(base + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${JSON.stringify(data)}`);
  return data;
}

/** An agent on the agent websocket, run inside a browser page (Node 20 has no WebSocket).
 *  It fails the first assignment of each task and completes the second with 1234 tokens. */
async function startAgent(page, base, agentId, token) {
  await page.goto(base + '/health');
  await page.evaluate(({ url, agentId, token }) => new Promise((resolve, reject) => {
    const seen = new Set();
    const ws = new WebSocket(url);
    window.agentFrames = [];
    ws.onopen = () => ws.send(JSON.stringify({
      type: 'identify', agent_id: agentId, token, name: 'Worker <One>', capabilities: ['code', 'review'],
    }));
    ws.onerror = () => reject(new Error('agent websocket failed'));
    ws.onmessage = (m) => {
      const f = JSON.parse(m.data);
      window.agentFrames.push(f);
      if (f.type === 'identified') resolve();
      if (f.type === 'error' && window.agentFrames.length === 1) reject(new Error('identify: ' + m.data));
      if (f.type !== 'task_assign') return;
      if (!seen.has(f.task_id)) {
        seen.add(f.task_id);
        ws.send(JSON.stringify({ type: 'task_failed', task_id: f.task_id, generation: f.generation, error: 'boom: <script>x</script>' }));
      } else {
        ws.send(JSON.stringify({ type: 'task_accepted', task_id: f.task_id }));
        setTimeout(() => ws.send(JSON.stringify({
          type: 'task_complete', task_id: f.task_id, generation: f.generation, result: { ok: true }, tokens_used: 1234,
        })), 250);
      }
    };
  }), { url: base.replace(/^http/, 'ws') + '/ws', agentId, token });
}

test('dashboard in a real browser against the real hub', { timeout: 120000 }, async (t) => {
  assert.ok(fs.existsSync(BIN), `hub binary missing at ${BIN}: run cargo build -p agentcom`);
  assert.ok(fs.existsSync(CHROMIUM), `Chromium missing at ${CHROMIUM}: apt-get install chromium`);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'agentcom-dash-'));
  const dataDir = path.join(tmp, 'data');
  const adminToken = crypto.randomBytes(32).toString('hex');
  let hub = await startHub({ dataDir, adminToken, bind: '127.0.0.1:0' });
  const hubs = [hub];
  const base = hub.base;
  let context;
  const started = Date.now();
  try {
    const worker = await http(base, 'POST', '/admin/tokens', adminToken, { agent_id: 'worker-1' });
    const viewer = await http(base, 'POST', '/admin/tokens', adminToken, { agent_id: 'watcher', role: 'viewer' });
    const secrets = [adminToken, worker.token, viewer.token];

    context = await chromium.launchPersistentContext(path.join(tmp, 'profile'), {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1500, height: 1000 },
    });
    context.setDefaultTimeout(10000);
    const page = context.pages()[0] || await context.newPage();
    const requested = [];
    const sent = [];
    const received = [];
    const pageErrors = [];
    page.on('request', (r) => requested.push(r.url()));
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const consoleErrors = [];
    const failed = [];
    page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') consoleErrors.push(m.text()); });
    page.on('response', (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`); });
    // A reload the test makes aborts the page's requests in flight (net::ERR_ABORTED):
    // that is the browser's doing, not a failure of the hub.
    let reloading = false;
    page.on('requestfailed', (r) => {
      const why = (r.failure() || {}).errorText;
      if (!(reloading && why === 'net::ERR_ABORTED')) failed.push(`failed ${r.url()}: ${why}`);
    });
    page.on('websocket', (ws) => {
      ws.on('framesent', (f) => sent.push(String(f.payload)));
      ws.on('framereceived', (f) => { try { received.push(JSON.parse(String(f.payload)).type); } catch (e) { /* binary */ } });
    });
    const text = (sel) => page.locator(sel).innerText();
    const chartLabel = (id) => page.locator('#' + id + ' svg title').first().textContent();
    const expectText = async (sel, re, timeout) => {
      await page.waitForFunction(({ sel, src, flags }) => {
        const el = document.querySelector(sel);
        return !!el && new RegExp(src, flags).test(el.innerText);
      }, { sel, src: re.source, flags: re.flags }, { timeout: timeout || 10000 })
        .catch(async (e) => { throw new Error(`${sel} never matched ${re}: now ${JSON.stringify(await page.locator(sel).innerText().catch(() => '?'))} (${e.message.split('\n')[0]})`); });
    };

    await t.test('sign-in form; bad and agent tokens are refused', async () => {
      await page.goto(base + '/dashboard');
      assert.equal(await page.title(), 'AgentCom Command Center');
      await page.locator('#signin').waitFor({ state: 'visible' });
      // A signed-out first load logs nothing: no 401 from whoami, no favicon 404.
      await page.waitForLoadState('networkidle');
      assert.deepEqual(consoleErrors, [], 'console errors on a signed-out load');
      assert.deepEqual(failed, [], 'failed requests on a signed-out load');
      await page.fill('#token', 'f'.repeat(64));
      await page.click('#signin-button');
      await expectText('#signin-error', /not valid/);
      await page.fill('#token', worker.token);
      await page.click('#signin-button');
      await expectText('#signin-error', /not an admin or viewer token/);
      assert.equal(await page.inputValue('#token'), '');
    });

    const signedIn = {};
    await t.test('admin signs in; the snapshot fills the panels', async () => {
      // The refused sign-ins above logged their 401 and 403; nothing may be logged from here.
      signedIn.consoleErrors = consoleErrors.length;
      signedIn.failed = failed.length;
      await page.fill('#token', adminToken);
      await page.click('#signin-button');
      await page.locator('#app').waitFor({ state: 'visible' });
      assert.equal(await page.inputValue('#token'), '', 'the token field is cleared');
      await expectText('#conn-text', /^Connected$/);
      await expectText('#health-text', /Warning -- 1 condition/);
      await page.click('#health-badge');
      await expectText('#health-conditions', /DETS backup: never run/);
      await expectText('#who', /admin/);
      await expectText('#agents-body', /No agents connected/);
      await expectText('#m-queued', /^0$/);
      await expectText('#m-uptime', /^0d 0h \dm$/);
      await expectText('#storage-body', /task_queue/);
      await expectText('#storage-body', /auth_tokens/);
      await expectText('#last-backup', /never/);
      await expectText('#next-backup', /^in /);
      await expectText('#storage-scope', /whole store/);
      await expectText('#storage-body', /quarantine/);
      await expectText('#quarantined', /^none$/);
      await expectText('#backups-body', /No backups yet/);
      await expectText('#actors-body', /task_queue/);
      assert.equal(await page.locator('#actors-body [data-restart="config"]').count(), 1);
      assert.ok(await page.locator('#backup-now').isVisible());
    });

    await t.test('a task submitted over HTTP shows up live, escaped', async () => {
      await http(base, 'POST', '/api/tasks', worker.token, {
        description: 'Render <b>docs</b> & "quotes"', priority: 'high', needed_capabilities: ['gpu'],
      });
      await expectText('#m-queued', /^1$/);
      await expectText('#queue-cards [data-priority="1"] .value', /^1$/);
      await expectText('#queue-cards [data-priority="0"] .value', /^0$/);
      await page.click('#open-toggle');
      await expectText('#open-body', /Render <b>docs<\/b> & "quotes"/);
      assert.equal(await page.locator('#open-body b').count(), 0, 'user strings are escaped');
      await expectText('#recent-body', /Render <b>docs/);
      await expectText('#recent-body', /queued/);
    });

    const agentPage = await context.newPage();
    await t.test('an agent joins; a failing task reaches the dead letter; Retry requeues it', async () => {
      await startAgent(agentPage, base, 'worker-1', worker.token);
      await page.bringToFront(); // a background tab's timers are throttled to 1 Hz
      await expectText('#agents-body', /Worker <One>/);
      assert.equal(await page.locator('#agents-body One').count(), 0);
      await expectText('#agents-body', /code/);
      await expectText('#m-agents', /^1$/);
      await http(base, 'POST', '/api/tasks', worker.token, {
        description: 'Doomed <i>task</i>', priority: 'urgent', max_retries: 1, needed_capabilities: ['code'],
      });
      await expectText('#dead-body', /Doomed <i>task<\/i>/);
      await expectText('#dead-body', /boom: <script>x<\/script>/);
      await expectText('#dead-count', /^1$/);
      await expectText('#recent-body', /dead_letter/);
      const retry = page.locator('#dead-body button[data-retry]');
      await retry.click();
      await expectText('#dead-body', /Requeued/);
      // Requeued, reassigned, completed by the agent on the second try.
      await expectText('#recent-body', /completed/);
      await expectText('#t-completed', /^1$/);
      await expectText('#t-tokens', /^1,234$/);
      await expectText('#m-throughput', /^1\/hr$/);
      await expectText('#dead-count', /^0$/, 5000);
      await expectText('#dead-body', /No dead-letter tasks/);
    });

    await t.test('recent tasks filter and sort', async () => {
      await page.fill('#recent-filter', 'doomed');
      await expectText('#recent-body', /Doomed/);
      assert.equal(await page.locator('#recent-body tr').count(), 1);
      await page.fill('#recent-filter', 'no-such-task-zzz');
      await expectText('#recent-body', /No task matches the filter/);
      await page.fill('#recent-filter', '');
      await page.click('#recent-panel th[data-sort="description"]');
      const first = await page.locator('#recent-body tr').first().innerText();
      assert.match(first, /Doomed/, 'sorted by description, ascending');
      await page.click('#recent-panel th[data-sort="at"]');
    });

    await t.test('Back up now updates the storage panel and the backups list; Verify says verified', async () => {
      await page.click('#backup-now');
      await expectText('#backup-msg', /verified/);
      await expectText('#last-backup', /just now|ago/);
      await expectText('#last-backup', /verified/);
      await expectText('#storage-health-status', /^healthy$/);
      await expectText('#backups-count', /^1$/);
      await expectText('#backups-body', /\d{4}-\d\d-\d\dT/);
      const conds = await text('#health-conditions');
      assert.doesNotMatch(conds, /never run/, 'the backup condition cleared without a snapshot');
      await page.locator('#backups-body button[data-verify]').first().click();
      await expectText('#backups-body .verify-result', /^verified$/);
    });

    await t.test('restarting an actor from the Supervision panel bumps its restarts', async () => {
      const cell = '#actors-body tr[data-actor="config"] td.restarts';
      const before = Number(await text(cell));
      await page.click('#actors-body [data-restart="config"]');
      await expectText(cell, new RegExp('^' + (before + 1) + '$'));
      await expectText('#actors-body tr[data-actor="config"]', /restarted/);
      await expectText('#sessions', /1 agent, 1 dashboard/);
    });

    await t.test('events were applied in place: no snapshot round trip per event', async () => {
      const elapsed = Date.now() - started;
      const allowed = Math.floor(elapsed / 30000);
      const requests = sent.filter((s) => s.includes('request_snapshot')).length;
      assert.ok(requests <= allowed, `${requests} request_snapshot frames in ${elapsed} ms`);
      const snapshots = received.filter((x) => x === 'snapshot').length;
      assert.ok(snapshots <= 1 + allowed, `${snapshots} snapshots in ${elapsed} ms`);
      assert.ok(received.filter((x) => x === 'events').length >= 3, 'event batches arrived');
      assert.deepEqual(pageErrors, []);
    });

    await t.test('a reload stays signed in; the token is in no URL and no web storage', async () => {
      reloading = true;
      await page.reload();
      await page.locator('#app').waitFor({ state: 'visible' });
      reloading = false;
      assert.ok(!(await page.locator('#signin').isVisible()));
      await expectText('#conn-text', /^Connected$/);
      await expectText('#last-backup', /verified/);
      await expectText('#t-completed', /^1$/);
      // A fresh page draws the hub's series at once: the completion before the reload, the
      // store after the backup.
      await expectText('#chart-throughput-sum', /^1 task in the last hour/);
      assert.match(await chartLabel('chart-throughput'), /1 task in all/);
      assert.match(await chartLabel('chart-store'), /over 1 backup or compaction/);
      const storage = await page.evaluate(() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage), document.cookie]));
      const html = await page.content();
      for (const s of secrets) {
        assert.ok(!page.url().includes(s), 'token in the page URL');
        assert.ok(!requested.some((u) => u.includes(s)), 'token in a request URL');
        assert.ok(!storage.includes(s), 'token in web storage or a script-readable cookie');
        assert.ok(!html.includes(s), 'token in the page');
      }
    });

    await t.test('the trend charts update live from events, without a reload', async () => {
      await page.evaluate(() => { window.notReloaded = true; });
      const before = await chartLabel('chart-throughput');
      assert.match(before, /1 task in all, at most 1 in one minute/);
      assert.match(await chartLabel('chart-queue'), /^Queued tasks over the last 10 minutes: 1 now/); // the 'gpu' task
      // The agent fails the first assignment (retries left: requeued) and completes the second.
      const task = await http(base, 'POST', '/api/tasks', worker.token, {
        description: 'Chart me', priority: 'normal', max_retries: 2, needed_capabilities: ['code'],
      });
      await expectText('#recent-body', /Chart me/);
      await page.waitForFunction(() => /2 tasks in all/.test(document.querySelector('#chart-throughput svg title').textContent));
      assert.match(await chartLabel('chart-throughput'), /2 tasks in all, at most [12] in one minute, [012] in the current minute/);
      await expectText('#chart-throughput-sum', /^2 tasks in the last hour/);
      assert.ok(await page.locator('#chart-throughput rect.bar.now').count() === 1, 'a bar for the current minute');
      // The queue went 1 -> 2 -> 1 (twice: the retry): the chart saw it (and the hub's
      // first sample, taken at start: 0).
      assert.match(await chartLabel('chart-queue'), /: 1 now, at most 2, at least 0, from \d+ samples/);
      assert.ok(await page.getByRole('img', { name: /Tasks completed per minute over the last hour/ }).isVisible(), 'an accessible chart');
      assert.equal((await http(base, 'GET', '/api/tasks/' + task.task_id, adminToken)).status, 'completed');
      assert.ok(await page.evaluate(() => window.notReloaded), 'the page was not reloaded');
    });

    await t.test('Compact now shows its progress and result and refreshes the storage figures', async () => {
      const button = page.locator('#compact-now');
      assert.ok(await button.isVisible());
      assert.equal(await button.innerText(), 'Compact now');
      await expectText('#compactions', /none since the hub started/);
      // Every state the button is rendered in, recorded in the page (no request is held:
      // interception switched on and off around requests in flight can abort them).
      await page.evaluate(() => {
        const b = document.querySelector('#compact-now');
        window.compactStates = [];
        window.compactObserver = new MutationObserver(() => window.compactStates.push({
          text: b.innerText, disabled: b.disabled, busy: b.getAttribute('aria-busy'),
          backup: document.querySelector('#backup-now').disabled, msg: document.querySelector('#compact-msg').innerText,
        }));
        window.compactObserver.observe(b, { attributes: true, childList: true, characterData: true, subtree: true });
      });
      await button.click();
      await expectText('#compact-msg', /^Compacted in .*: reclaimed .* \(.* → .*\), longest write pause [\d.]+ ms$/, 30000);
      const states = await page.evaluate(() => { window.compactObserver.disconnect(); return window.compactStates; });
      const progress = states.find((s) => s.busy === 'true') || states;
      assert.deepEqual(progress, {
        text: 'Compacting…', disabled: true, busy: 'true', backup: true,
        msg: 'Compacting: copying the live records into a fresh database while writes go on...',
      });
      assert.ok(received.includes('events'));
      await expectText('#compact-now', /^Compact now$/);
      assert.ok(!(await button.isDisabled()), 'the button is back');
      // The storage report was fetched again: the compaction counted, its figures shown.
      await expectText('#compactions', /^1 done, .* reclaimed in all; last: .* reclaimed in .*, writes paused at most [\d.]+ ms$/);
      const health = await http(base, 'GET', '/api/admin/storage-health', adminToken);
      assert.equal(health.compaction.completed, 1);
      // The store chart has a point for the compaction.
      await page.waitForFunction(() => /over 2 backups and compactions/.test(document.querySelector('#chart-store svg title').textContent));
      assert.match(await chartLabel('chart-store'), /at the last \(after a compaction\)/);
      assert.match(await page.locator('#chart-store table').innerText(), /compaction/);
      assert.deepEqual(pageErrors, []);
      assert.deepEqual(consoleErrors.slice(signedIn.consoleErrors), [], 'no console errors or warnings since signing in');
      assert.deepEqual(failed.slice(signedIn.failed), [], 'no failed requests since signing in');
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      // A refusal (here faked: the hub answers 409 during a backup) is a clear message.
      await page.route('**/api/admin/compact', (route) => route.fulfill({
        status: 409, contentType: 'application/json', body: JSON.stringify({ error: 'backup_in_progress' }),
      }));
      await button.click();
      await expectText('#compact-msg', /^Not compacted: a backup is running; try again when it ends\.$/);
      await page.unroute('**/api/admin/compact');
      assert.ok(!(await button.isDisabled()));
    });

    await t.test('a viewer sees the panels but no admin buttons', async () => {
      const vctx = await context.browser().newContext({ viewport: { width: 1400, height: 900 } });
      try {
        const v = await vctx.newPage();
        v.setDefaultTimeout(10000);
        await v.goto(base + '/dashboard');
        await v.fill('#token', viewer.token);
        await v.click('#signin-button');
        await v.locator('#app').waitFor({ state: 'visible' });
        await v.waitForFunction(() => document.querySelector('#conn-text').innerText === 'Connected');
        await v.waitForFunction(() => /config/.test(document.querySelector('#actors-body').innerText));
        assert.match(await v.locator('#who').innerText(), /viewer/);
        assert.ok(!(await v.locator('#backup-now').isVisible()), 'Back up now hidden');
        assert.ok(!(await v.locator('#compact-now').isVisible()), 'Compact now hidden');
        assert.match(await v.locator('#chart-throughput svg title').first().textContent(), /2 tasks in all/);
        assert.equal(await v.locator('[data-restart]').count(), 0, 'no Restart buttons');
        assert.equal(await v.locator('[data-verify]').count(), 0, 'no Verify buttons');
        assert.equal(await v.locator('[data-retry]').count(), 0, 'no Retry buttons');
        assert.match(await v.locator('#backups-body').innerText(), /shown to admins/);
        assert.match(await v.locator('#storage-body').innerText(), /task_queue/);
        // Revoking the viewer's token closes its socket (4003): the page signs out at once.
        await http(base, 'DELETE', '/admin/tokens/watcher', adminToken);
        await v.locator('#signin').waitFor({ state: 'visible' });
        assert.match(await v.locator('#signin-error').innerText(), /session has ended/);
      } finally {
        await vctx.close();
      }
    });

    await t.test('the page reconnects with backoff after the hub restarts', async () => {
      const port = new URL(base).port;
      await stopHub(hub);
      await expectText('#conn-text', /^Disconnected/);
      hub = await startHub({ dataDir, adminToken, bind: '127.0.0.1:' + port });
      hubs.push(hub);
      await expectText('#conn-text', /^Connected$/, 15000);
      await expectText('#last-backup', /just now|ago/); // the last backup is found on disk (F2)
      assert.ok(await page.locator('#app').isVisible(), 'still signed in');
    });

    await t.test('sign-out clears the session', async () => {
      await page.click('#signout');
      await page.locator('#signin').waitFor({ state: 'visible' });
      await page.reload();
      await page.locator('#signin').waitFor({ state: 'visible' });
      assert.ok(!(await page.locator('#app').isVisible()));
    });
  } finally {
    if (context) await context.close().catch(() => {});
    await stopHub(hub);
    // The hubs' warnings and errors (AGENTCOM_LOG=warn), to diagnose a failure above.
    hubs.forEach((h, i) => { if (h.log().trim()) console.error(`hub ${i + 1} logged:\n${h.log()}`); });
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
