// Drives the dashboard in Debian's headless Chromium through playwright-core, as a maintainer
// would: open /, search for a package, open its item's page, read a FAILED outcome (red text),
// follow the log link and open the log at a line anchor, open the job; then open pages of a
// hostile item (markup and script in its item, note and log) with JavaScript enabled and check
// nothing ran and nothing was injected.
//
// Usage: node dashboard.mjs SPEC.json — SPEC: {base, prefix, item, testcase, arch,
// passed_testcase, line, line_text, hostile_item, hostile_prefix, screenshots}. Prints one JSON report on stdout
// ({checks: [...], screenshots: [...]}) and exits 0 when every check passed, 1 otherwise.
// Run by services/api/tests/dashboard_browser.rs, which makes the data and the api.

import { readFileSync, mkdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const spec = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const checks = [];
const screenshots = [];

function check(name, ok, detail) {
  checks.push({ name, ok: Boolean(ok), detail: detail === undefined ? null : String(detail) });
  if (!ok) throw new Error(`${name}: ${detail}`);
}

async function shot(page, name) {
  const path = join(spec.screenshots, `${name}.png`);
  await page.screenshot({ path });
  screenshots.push(path);
}

/** The computed colour of the first element `selector` matches, as [r, g, b]. */
async function colour(page, selector, property = 'color') {
  const css = await page.locator(selector).first().evaluate(
    (el, prop) => getComputedStyle(el)[prop], property);
  return css.match(/\d+/g).slice(0, 3).map(Number);
}

const isRed = ([r, g, b]) => r >= 150 && g <= 80 && b <= 80;
const isGreen = ([r, g, b]) => g >= 80 && g > r + 30 && g > b + 30;

/** A maintainer's path through the dashboard, with JavaScript off: reading needs none. */
async function maintainer(browser) {
  const context = await browser.newContext({
    javaScriptEnabled: false,
    viewport: { width: 1280, height: 800 },
  });
  const page = await context.newPage();

  const response = await page.goto(`${spec.base}/`);
  check('/ redirects to the dashboard', new URL(page.url()).pathname === '/dashboard',
    `${page.url()}: ${response.status()} ${JSON.stringify(response.headers())} ${(await page.content()).slice(0, 300)}`);
  await shot(page, 'front');

  await page.fill('input[name=q]', spec.prefix);
  await Promise.all([page.waitForURL(/[?&]q=/), page.click('form#search button[type=submit]')]);
  check('the search is a URL', new URL(page.url()).searchParams.get('q') === spec.prefix, page.url());
  const itemLink = page.locator(`#items tr[data-item="${spec.item}"] a.item`);
  check('the searched item is listed', (await itemLink.count()) === 1, spec.item);
  await shot(page, 'search');

  await Promise.all([page.waitForURL(/\/dashboard\/items\//), itemLink.click()]);
  check('the item page names the item', (await page.textContent('#item')) === spec.item);
  const failedRow = `#latest tr.latest[data-testcase="${spec.testcase}"][data-arch="${spec.arch}"]`;
  const failed = page.locator(`${failedRow} .outcome`).first();
  check('the FAILED outcome reads FAILED', (await failed.textContent()) === 'FAILED',
    await failed.textContent());
  const red = await colour(page, `${failedRow} .outcome`);
  check('FAILED is red text', isRed(red), red);
  const passed = await colour(page, `#latest tr.latest[data-testcase="${spec.passed_testcase}"] .outcome`);
  check('PASSED is green text', isGreen(passed), passed);
  const overall = await colour(page, '#item-outcome .outcome');
  check("the item's outcome (the worst) is red", isRed(overall), overall);
  // The earlier results under a latest one open without JavaScript (<details>).
  const details = page.locator(`${failedRow} + tr.history details`);
  check('earlier results are under the latest', (await details.count()) === 1);
  await details.locator('summary').click();
  check('earlier results open', await details.evaluate((d) => d.open));
  await shot(page, 'item');

  // Its job's page: the job is "done", which is not a success: only the outcome says how it went.
  await Promise.all([
    page.waitForURL(/\/dashboard\/jobs\/[0-9a-f-]+$/),
    page.locator(`${failedRow} a.job`).click(),
  ]);
  const jobOutcome = await colour(page, '#outcome .outcome');
  check("the job's outcome is red", isRed(jobOutcome), jobOutcome);
  const jobState = await colour(page, '#state span');
  check('the state "done" is not green', !isGreen(jobState), jobState);
  await shot(page, 'job');
  await page.goBack();

  // The log, from the result's log link, then at a line anchor as a shared link opens it.
  await Promise.all([page.waitForURL(/\/files\/task\.log/), page.locator(`${failedRow} a.log`).click()]);
  const logUrl = page.url().split('#')[0];
  await page.goto(`${logUrl}#L${spec.line}`);
  const target = page.locator(`#L${spec.line}`);
  const box = await target.boundingBox();
  check(`line ${spec.line} is scrolled into view`, box && box.y >= 0 && box.y < 800, JSON.stringify(box));
  const highlight = await colour(page, `#L${spec.line}`, 'backgroundColor');
  check(`line ${spec.line} is highlighted as the target`, highlight.join(',') === '255,248,197', highlight);
  check(`line ${spec.line} holds the finding`, (await target.textContent()).includes(spec.line_text),
    await target.textContent());
  // Clicking another line's number moves the anchor, still without JavaScript.
  await page.click(`a.ln[href="#L${spec.line + 1}"]`);
  check('a line number is a link to its anchor', page.url().endsWith(`#L${spec.line + 1}`), page.url());
  await page.goto(`${logUrl}#L${spec.line}`);
  await shot(page, 'log');
  await context.close();
}

/** Hostile task output, with JavaScript on: escaping (and the CSP) must leave nothing to run. */
async function hostile(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const ran = [];
  page.on('dialog', async (dialog) => { ran.push(`dialog: ${dialog.message()}`); await dialog.dismiss(); });
  const visit = async (url, what) => {
    await page.goto(url);
    const state = await page.evaluate(() => ({
      pwned: window.__pwned ?? null,
      scripts: document.scripts.length,
      images: [...document.images].map((i) => i.getAttribute('src')),
      handlers: [...document.querySelectorAll('*')].filter(
        (el) => [...el.attributes].some((a) => a.name.startsWith('on'))).length,
    }));
    check(`${what}: no script ran`, state.pwned === null && ran.length === 0, JSON.stringify([state, ran]));
    check(`${what}: no script element`, state.scripts === 0, state.scripts);
    check(`${what}: no injected element or handler`,
      state.handlers === 0 && state.images.every((src) => src.startsWith('/badge/')),
      JSON.stringify(state));
  };
  await visit(`${spec.base}/dashboard?q=${encodeURIComponent(spec.hostile_prefix)}`, 'hostile search');
  const link = page.locator('#items a.item').first();
  await Promise.all([page.waitForURL(/\/dashboard\/items\//), link.click()]);
  const itemUrl = page.url();
  await visit(itemUrl, 'hostile item page');
  check('the hostile item is shown as text', (await page.textContent('#item')) === spec.hostile_item,
    await page.textContent('#item'));
  await shot(page, 'hostile-item');
  const logHref = await page.locator('a.log').first().getAttribute('href');
  await visit(`${spec.base}${logHref}`, 'hostile log');
  const jobHref = await page.locator('#where a').first().getAttribute('href');
  await visit(`${spec.base}${jobHref}`, 'hostile job page');
  await context.close();
}

/** The item's badge: an SVG image saying FAILED. */
async function badge(browser) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const response = await page.goto(`${spec.base}/badge/items/${encodeURIComponent(spec.item)}.svg`);
  check('the badge is SVG', response.headers()['content-type'].startsWith('image/svg+xml'),
    response.headers()['content-type']);
  check('the badge says FAILED', (await page.textContent('text[data-outcome]')) === 'FAILED');
  await context.close();
}

mkdirSync(spec.screenshots, { recursive: true });
// Debian's /usr/bin/chromium is a wrapper script; the binary beside it starts faster.
const executablePath = ['/usr/lib/chromium/chromium', '/usr/bin/chromium'].find(existsSync);
const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
let failure = null;
try {
  await maintainer(browser);
  await hostile(browser);
  await badge(browser);
} catch (error) {
  failure = String(error && error.stack || error);
} finally {
  await browser.close();
}
process.stdout.write(`${JSON.stringify({ checks, screenshots, failure })}\n`);
process.exit(failure ? 1 : 0);
