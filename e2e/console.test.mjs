// The approvals console in a real Chromium against the real service and database.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { api, base, launch, noKeyInURLs, page, shot, signIn, tenant } from './lib.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

const pay = { amount_cents: 125000, currency: 'EUR', iban: 'DE89370400440532013000',
  memo: 'Invoice 2026-114 for the quarterly infrastructure contract, including the storage expansion agreed in the ' +
    'October review and the support hours billed at the revised rate; pay before the 15th to keep the discount.' };

test('an approver signs in, approves a held L3 request, and the agent then runs it', { timeout: 90000 }, async () => {
  const t = await tenant('acme', {
    'payments.transfer': { trust_level: 'L3' },
    'crm.update_contact': { trust_level: 'L3', approval_ttl_seconds: 900 },
    'ledger.close_month': { trust_level: 'L4' },
  });
  await t.hold('crm.update_contact', { contact_id: 'c-8812', fields: { phone: '+49 30 1234567' } });
  await t.hold('ledger.close_month', { period: '2026-11', entity: 'acme-gmbh' });
  const held = await t.hold('payments.transfer', pay);
  assert.equal(held.status, 'pending_approval');

  // Before approval the agent's call is refused.
  assert.equal((await t.run('payments.transfer', pay, held.approval_request_id)).status, 409);

  const p = await page(browser);
  await p.goto(base + '/console/login');
  await shot(p, 'sign-in', false);
  await signIn(p, t.alice);

  const cookies = await p.context().cookies();
  const session = cookies.find((c) => c.name === 'atl_console');
  assert.ok(session, 'session cookie set');
  assert.equal(session.httpOnly, true);
  assert.equal(session.secure, true);
  assert.equal(session.sameSite, 'Strict');
  assert.equal(session.path, '/console');
  assert.ok(!session.value.includes(t.alice), 'the cookie does not hold the key in clear');
  assert.ok(session.expires > Date.now() / 1000 && session.expires <= Date.now() / 1000 + 8 * 3600 + 60, 'bounded lifetime');

  // The queue: newest first, with level, agent, tool, requester and time left.
  const rows = p.locator('table.queue tbody tr');
  assert.equal(await rows.count(), 3);
  const first = rows.first();
  assert.equal(await first.locator('td[data-label="Tool"]').innerText(), 'payments.transfer');
  assert.equal(await first.locator('.badge').innerText(), 'L3');
  assert.equal(await first.locator('td[data-label="Agent"]').innerText(), 'billing-bot');
  assert.equal(await first.locator('td[data-label="Requested by"]').innerText(), 'billing-bot');
  assert.match(await first.locator('td[data-label="Time left"]').innerText(), /^(59 min|60 min|1h 00m) left$/);
  assert.ok(await first.locator('td[data-label="Time left"] time[datetime]').count());
  assert.equal(await rows.nth(1).locator('.badge').innerText(), 'L4');
  await shot(p, 'queue');

  // Keyboard: Tab from the skip link reaches the first request's link.
  await p.keyboard.press('Tab');
  assert.equal(await p.evaluate(() => document.activeElement.textContent), 'Skip to content');

  await first.locator('a').click();
  await p.waitForURL(/\/console\/approvals\/[0-9a-f-]{36}$/);
  assert.ok(p.url().endsWith(held.approval_request_id));
  await assert.doesNotReject(p.getByText('1 more approval needed').waitFor());
  const payload = p.locator('pre.json');
  assert.match(await payload.innerText(), /"iban": "DE89370400440532013000"/);
  // The long memo is folded until opened.
  const fold = payload.locator('details.fold');
  assert.equal(await fold.count(), 1);
  assert.equal(await fold.evaluate((d) => d.open), false);
  await shot(p, 'request');
  await fold.locator('summary').click();
  assert.equal(await fold.evaluate((d) => d.open), true);

  await p.getByLabel('Reason').fill('Matches invoice 2026-114');
  await p.getByRole('button', { name: 'Approve' }).click();
  await p.waitForURL(/done=APPROVE$/);
  await assert.doesNotReject(p.getByText('Your approval is recorded.').waitFor());
  assert.equal(await p.locator('dd .status').innerText(), 'Approved');
  assert.match(await p.locator('.decisions').innerText(), /alice@example\.com[\s\S]*Matches invoice 2026-114/);
  assert.equal(await p.getByRole('button', { name: 'Approve' }).count(), 0, 'no form once decided');

  const ran = await t.run('payments.transfer', pay, held.approval_request_id);
  assert.equal(ran.status, 200, JSON.stringify(ran.body));
  assert.equal(ran.body.status, 'allowed');
  // An approval runs once.
  assert.equal((await t.run('payments.transfer', pay, held.approval_request_id)).status, 409);

  await p.goto(base + '/console?status=APPROVED');
  assert.equal(await p.locator('table.queue tbody tr').count(), 1);
  assert.equal(await p.locator('.tabs a[aria-current=page]').innerText(), 'Approved');

  // The same queue on a phone: one card per request.
  const phone = await page(browser, { width: 390, height: 844 }, { deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  await signIn(phone, t.bob);
  assert.equal(await phone.locator('table.queue tbody tr').count(), 2);
  assert.equal(await phone.locator('table.queue thead').evaluate((h) => h.getBoundingClientRect().height <= 1), true);
  assert.ok(await phone.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no sideways scrolling');
  await shot(phone, 'queue-phone', false);
  await phone.locator('table.queue tbody tr a').first().click();
  await assert.doesNotReject(phone.getByText('2 more approvals needed').waitFor());
  assert.ok(await phone.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no sideways scrolling');
  await shot(phone, 'request-phone');

  const before = await p.context().cookies();
  await p.getByRole('button', { name: 'Sign out' }).click();
  await p.waitForURL(/\/console\/login\?out=1$/);
  await p.goto(base + '/console');
  assert.match(p.url(), /\/console\/login$/);
  // The session ended on the server: a copy of the old cookie is refused too.
  await p.context().addCookies(before.filter((c) => c.name === 'atl_console'));
  await p.goto(base + '/console');
  assert.match(p.url(), /\/console\/login\?ended=1$/);
  noKeyInURLs(p, t.alice, t.bob);
  noKeyInURLs(phone, t.alice, t.bob);
  await p.context().close();
  await phone.context().close();
});

test('an L4 request needs two distinct approvers', { timeout: 60000 }, async () => {
  const t = await tenant('l4', { 'ledger.close_month': { trust_level: 'L4' } });
  const args = { period: '2026-11', entity: 'acme-gmbh' };
  const held = await t.hold('ledger.close_month', args);
  const url = `${base}/console/approvals/${held.approval_request_id}`;

  const a = await page(browser);
  await signIn(a, t.alice);
  await a.goto(url);
  await assert.doesNotReject(a.getByText('2 more approvals needed').waitFor());
  await a.getByRole('button', { name: 'Approve' }).click();
  await a.waitForURL(/done=APPROVE$/);
  assert.equal(await a.locator('dd .status').innerText(), 'Pending');
  await assert.doesNotReject(a.getByText('1 more approval needed').waitFor());
  assert.equal((await t.run('ledger.close_month', args, held.approval_request_id)).status, 409, 'one approval is not enough');

  // The same approver cannot count twice: SQL refuses and the page says why.
  await a.getByRole('button', { name: 'Approve' }).click();
  await assert.doesNotReject(a.locator('.flash.error code', { hasText: 'already_decided' }).waitFor());
  assert.equal(await a.locator('dd .status').innerText(), 'Pending');

  const b = await page(browser);
  await signIn(b, t.bob);
  await b.goto(url);
  await b.getByLabel('Reason').fill('Second review done');
  await b.getByRole('button', { name: 'Approve' }).click();
  await b.waitForURL(/done=APPROVE$/);
  assert.equal(await b.locator('dd .status').innerText(), 'Approved');
  assert.equal(await b.locator('.decisions li').count(), 2);
  assert.equal((await t.run('ledger.close_month', args, held.approval_request_id)).status, 200);
  await a.context().close();
  await b.context().close();
});

test('a rejection with a reason stops the call', { timeout: 60000 }, async () => {
  const t = await tenant('rej', { 'payments.transfer': { trust_level: 'L3' } });
  const args = { amount_cents: 990000, iban: 'GB33BUKB20201555555555' };
  const held = await t.hold('payments.transfer', args);
  const p = await page(browser);
  await signIn(p, t.alice);
  await p.locator('table.queue tbody tr a').first().click();
  // Keyboard only: focus the reason, type, Tab to Approve, Tab to Reject, Enter.
  await p.getByLabel('Reason').focus();
  await p.keyboard.type('Unknown beneficiary account');
  await p.keyboard.press('Tab');
  await p.keyboard.press('Tab');
  assert.equal(await p.evaluate(() => document.activeElement.textContent), 'Reject');
  await p.keyboard.press('Enter');
  await p.waitForURL(/done=REJECT$/);
  assert.equal(await p.locator('dd .status').innerText(), 'Rejected');
  assert.match(await p.locator('.decisions').innerText(), /Rejected[\s\S]*alice@example\.com[\s\S]*Unknown beneficiary account/);
  const ran = await t.run('payments.transfer', args, held.approval_request_id);
  assert.equal(ran.status, 409);
  await p.goto(base + '/console?status=REJECTED');
  assert.equal(await p.locator('table.queue tbody tr').count(), 1);
  await p.goto(base + '/console');
  assert.equal(await p.locator('table.queue tbody tr').count(), 0);
  await assert.doesNotReject(p.getByText('No pending requests.').waitFor());
  await p.context().close();
});

test('an expired request can no longer be decided', { timeout: 60000 }, async () => {
  // One second is the shortest approval TTL a policy allows.
  const t = await tenant('exp', { 'crm.delete_contact': { trust_level: 'L3', approval_ttl_seconds: 1 } });
  const held = await t.hold('crm.delete_contact', { contact_id: 'c-1' });
  const p = await page(browser);
  await signIn(p, t.alice);
  // Wait out the TTL on the clock, not on a guess.
  while (Date.now() <= Date.parse(held.expires_at) + 50) await new Promise((r) => setTimeout(r, 100));
  await p.goto(`${base}/console/approvals/${held.approval_request_id}`);
  assert.match(await p.locator('strong.left').innerText(), /^expired .* ago$/);
  await p.getByRole('button', { name: 'Approve' }).click();
  await assert.doesNotReject(p.locator('.flash.error code', { hasText: 'approval_expired' }).waitFor());

  const swept = await api('POST', '/api/v1/approvals/expire', t.admin);
  assert.deepEqual(swept.body, { expired: 1 });
  await p.goto(base + '/console?status=EXPIRED');
  assert.equal(await p.locator('table.queue tbody tr').count(), 1);
  await p.locator('table.queue tbody tr a').click();
  assert.equal(await p.locator('dd .status').innerText(), 'Expired');
  assert.equal(await p.getByRole('button', { name: 'Approve' }).count(), 0);
  await p.context().close();
});

test("another tenant's approver sees neither the queue nor the request", { timeout: 60000 }, async () => {
  const a = await tenant('iso-a', { 'payments.transfer': { trust_level: 'L3' } });
  const b = await tenant('iso-b');
  const held = await a.hold('payments.transfer', { amount_cents: 100 });
  const p = await page(browser);
  await signIn(p, b.alice);
  assert.equal(await p.locator('.tenant').innerText(), b.id);
  assert.equal(await p.locator('table.queue tbody tr').count(), 0);
  const res = await p.goto(`${base}/console/approvals/${held.approval_request_id}`);
  assert.equal(res.status(), 404);
  await assert.doesNotReject(p.locator('code', { hasText: 'approval_not_found' }).waitFor());
  await p.context().close();
});

test('forms need their CSRF token; agent keys cannot sign in', { timeout: 60000 }, async () => {
  const t = await tenant('csrf', { 'payments.transfer': { trust_level: 'L3' } });
  const held = await t.hold('payments.transfer', { amount_cents: 100 });
  const url = `${base}/console/approvals/${held.approval_request_id}`;

  const agent = await page(browser);
  await agent.goto(base + '/console/login');
  await agent.getByLabel('API key').fill(t.agent);
  await agent.getByRole('button', { name: 'Sign in' }).click();
  await assert.doesNotReject(agent.getByText('Only approver and admin keys can sign in').waitFor());
  assert.equal((await agent.context().cookies()).some((c) => c.name === 'atl_console'), false);
  await agent.context().close();

  const p = await page(browser);
  await signIn(p, t.alice);
  await p.goto(url);
  await p.locator('form.decide input[name=csrf]').evaluate((el) => el.remove());
  await p.getByRole('button', { name: 'Approve' }).click();
  await assert.doesNotReject(p.locator('code', { hasText: 'csrf_failed' }).waitFor());

  // A form on another site posting to the console: the Strict cookie stays home, and the post is refused.
  await p.route('http://attacker.test/', (route) => route.fulfill({ contentType: 'text/html',
    body: `<form method="post" action="${url}/decide"><input name="decision" value="APPROVE"><button>go</button></form>` }));
  await p.goto('http://attacker.test/');
  const [resp] = await Promise.all([p.waitForResponse(`${url}/decide`), p.locator('button').click()]);
  assert.ok([401, 403].includes(resp.status()), `cross-site post answered ${resp.status()}`);

  const still = await api('GET', `/api/v1/approvals/${held.approval_request_id}`, t.admin);
  assert.equal(still.body.status, 'PENDING');
  assert.equal(still.body.decisions.length, 0);
  noKeyInURLs(p, t.alice);
  await p.context().close();
});
