// Helpers for the console's browser tests: the API calls that set a tenant up,
// and a Chromium launched from Debian's package.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const base = process.env.ATL_URL;
const operator = process.env.ATL_ADMIN_TOKEN;
const shots = process.env.ATL_SCREENSHOT_DIR;
if (!base || !operator) throw new Error('ATL_URL and ATL_ADMIN_TOKEN must be set (console_e2e_test.go sets them)');

// api sends one JSON request and returns {status, body}.
export async function api(method, path, key, body) {
  const headers = { authorization: `Bearer ${key}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(15000) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function ok(status, res) {
  assert.equal(res.status, status, JSON.stringify(res.body));
  return res.body;
}

// tenant creates a tenant with an agent, two approvers and the policies given.
export async function tenant(prefix, policies = {}) {
  const id = `${prefix}-${randomBytes(4).toString('hex')}`;
  const admin = (await ok(201, await api('POST', '/api/v1/tenants', operator, { id, name: `Tenant ${prefix}` }))).api_key;
  const issue = async (role, subject) => (await ok(201, await api('POST', '/api/v1/keys', admin, { role, subject }))).api_key;
  const t = { id, admin, agent: await issue('agent', 'billing-bot'), alice: await issue('approver', 'alice@example.com'),
    bob: await issue('approver', 'bob@example.com') };
  for (const [tool, policy] of Object.entries(policies)) {
    await ok(200, await api('PUT', `/api/v1/policies/${tool}`, admin, policy));
  }
  // hold asks the agent to run tool with args and returns the held request's answer.
  t.hold = async (tool, args) => ok(202, await api('POST', '/api/v1/agents/billing-bot/execute', t.agent,
    { workflow: 'month-end', tool, args }));
  t.run = async (tool, args, approvalRequestId) => api('POST', '/api/v1/agents/billing-bot/execute', t.agent,
    { workflow: 'month-end', tool, args, approval_request_id: approvalRequestId });
  return t;
}

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // Without the background-networking flags Chromium's own connections are refused here and it stalls.
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
  });
}

// page opens a browser context of the given viewport that records every URL it requests.
export async function page(browser, viewport = { width: 1280, height: 800 }, extra = {}) {
  const context = await browser.newContext({ viewport, ...extra });
  const p = await context.newPage();
  p.setDefaultTimeout(15000);
  p.urls = [];
  p.on('request', (r) => p.urls.push(r.url()));
  return p;
}

// signIn signs in through the form with the keyboard, as a person would.
export async function signIn(p, key) {
  await p.goto(base + '/console');
  assert.match(p.url(), /\/console\/login$/);
  assert.equal(await p.evaluate(() => document.activeElement && document.activeElement.id), 'key', 'the key field has focus');
  await p.keyboard.type(key);
  await p.keyboard.press('Enter');
  await p.waitForURL(/\/console$/);
}

// shot saves a screenshot for the README when ATL_SCREENSHOT_DIR is set.
export async function shot(p, name, fullPage = true) {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  await p.screenshot({ path: join(shots, `${name}.png`), fullPage });
}

// noKeyInURLs checks that a secret never appeared in any URL the browser asked for.
export function noKeyInURLs(p, ...keys) {
  for (const u of p.urls) for (const k of keys) assert.ok(!u.includes(k), `a key appeared in a URL: ${u}`);
}
