// Drives the Airflow 3 UI like an operator: sign in, open a Dag's trigger form,
// fill its Params, trigger, wait until the run succeeds in the grid, open a
// task's log, and take screenshots along the way.
//
// Usage: node airflow_ui.js SCENARIO.json   (prints one JSON result line on stdout)
//
// The scenario (written by tests/browser/conftest.py):
//   base_url, username, password, user_data_dir, timeout_s,
//   dag_id (optional: without it only the nav part runs),
//   logical_date: {date: "2013/01/02", time: "00:00"}  (UTC; optional)
//   params:  [{name, kind: text|number|date|boolean|select|multiselect, value}]
//   task:    {task_id, map_index (optional), log_contains: [..]}
//   nav:     {menu, category, expect: [{name, href}], absent: [names]}  (plugin links)
//   screenshots: {nav, form, grid, log}  (paths; any may be missing)
//
// Selectors come from Airflow 3.3's React UI: form fields have the id
// "element_<param name>", the run header has data-testid="state-badge", grid
// cells have data-testid="grid-<run id>-<task id>".
'use strict';

const fs = require('fs');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.DATACLOUD_CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

function step(msg) {
  process.stderr.write(`browser | ${msg}\n`);
}

async function signIn(page, s) {
  step(`sign in at ${s.base_url}`);
  await page.goto(`${s.base_url}/`);
  const login = page.getByLabel('Username');
  await login.or(page.getByRole('button', { name: 'Browse' })).first().waitFor();
  if (!(await login.isVisible())) return; // this profile is signed in already
  await login.fill(s.username);
  await page.getByLabel('Password').fill(s.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL((u) => !u.pathname.startsWith('/auth'), { timeout: 30000 });
}

async function setSwitch(page, name, value) {
  const input = page.locator(`input[name="element_${name}"]`);
  if ((await input.isChecked()) !== value) {
    await page.locator(`[id="switch:element_${name}"]`).click();
  }
  if ((await input.isChecked()) !== value) throw new Error(`switch ${name} did not change to ${value}`);
}

async function pick(page, name, values, clear) {
  const box = page.locator(`#element_${name}`);
  if (clear) {
    // react-select: one "Remove X" per selected value
    for (let i = 0; i < 50; i += 1) {
      const remove = box.locator('[aria-label^="Remove "]').first();
      if (!(await remove.count())) break;
      await remove.click();
    }
  }
  const input = box.getByRole('combobox');
  for (const v of values) {
    await input.click();
    await input.fill(String(v));
    await page.getByRole('option', { name: String(v), exact: true }).click();
  }
  const chosen = await box.locator(`input[type="hidden"][name="element_${name}"]`).evaluateAll((els) => els.map((e) => e.value));
  return chosen;
}

async function fillParam(page, p) {
  step(`param ${p.name} (${p.kind}) = ${JSON.stringify(p.value)}`);
  const field = page.locator(`[name="element_${p.name}"]`).first();
  switch (p.kind) {
    case 'text':
    case 'number':
    case 'date':
      await field.fill(String(p.value));
      break;
    case 'boolean':
      await setSwitch(page, p.name, Boolean(p.value));
      break;
    case 'select': {
      const chosen = await pick(page, p.name, [p.value], false);
      if (chosen.join() !== String(p.value)) throw new Error(`select ${p.name} holds ${chosen}, not ${p.value}`);
      break;
    }
    case 'multiselect': {
      const chosen = await pick(page, p.name, p.value, true);
      if (chosen.join() !== p.value.join()) throw new Error(`multiselect ${p.name} holds ${chosen}, not ${p.value}`);
      break;
    }
    default:
      throw new Error(`unknown param kind ${p.kind}`);
  }
}

async function waitForRun(page, s, runUrl) {
  const deadline = Date.now() + s.timeout_s * 1000;
  const badge = page.getByTestId('header-card').getByTestId('state-badge');
  let last = '';
  let polls = 0;
  while (Date.now() < deadline) {
    const state = ((await badge.textContent({ timeout: 10000 }).catch(() => '')) || '').trim().toLowerCase();
    if (state !== last) step(`run is ${state || '(loading)'}`);
    last = state;
    if (state === 'success') return state;
    if (state === 'failed') throw new Error(`run ended failed; see ${runUrl}`);
    await page.waitForTimeout(2000);
    polls += 1;
    if (polls % 5 === 0) await page.reload(); // in case the UI's own polling stalls
  }
  throw new Error(`run still "${last}" after ${s.timeout_s}s; see ${runUrl}`);
}

async function main() {
  const s = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const shots = s.screenshots || {};
  const result = { screenshots: [] };
  const ctx = await chromium.launchPersistentContext(s.user_data_dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1400, height: 900 },
    colorScheme: 'light',
  });
  const shoot = async (page, key, opts = {}) => {
    if (!shots[key]) return;
    await page.screenshot({ path: shots[key], ...opts });
    result.screenshots.push(shots[key]);
  };
  let page;
  try {
    page = await ctx.newPage();
    page.setDefaultTimeout(60000);
    await signIn(page, s);

    if (s.nav) {
      step(`open ${s.nav.menu} > ${s.nav.category}`);
      await page.getByRole('button', { name: s.nav.menu, exact: true }).click();
      await page.getByRole('menuitem', { name: s.nav.category }).click();
      const items = page.locator(`a[role="menuitem"]`);
      await items.first().waitFor();
      const found = await items.evaluateAll((els) => els.map((e) => ({ name: e.getAttribute('aria-label'), href: e.getAttribute('href') })));
      result.nav = found;
      await page.waitForTimeout(800); // let the submenu finish fading in
      await shoot(page, 'nav');
      await page.keyboard.press('Escape');
      await page.keyboard.press('Escape');
    }

    if (s.dag_id) {
      step(`open the trigger form of ${s.dag_id}`);
      await page.goto(`${s.base_url}/dags/${s.dag_id}`);
      await page.getByRole('button', { name: 'Trigger Dag' }).click();
      const dialog = page.getByRole('dialog');
      await dialog.getByText('Run Parameters').waitFor();
      if (s.logical_date) {
        step(`logical date ${s.logical_date.date} ${s.logical_date.time} UTC`);
        await dialog.getByTestId('datetime-input').click();
        const date = page.getByPlaceholder('YYYY/MM/DD');
        await date.fill(s.logical_date.date);
        await page.getByPlaceholder('HH:mm').fill(s.logical_date.time);
        await date.press('Enter');
        await dialog.getByRole('heading').first().click(); // close the picker
      }
      for (const p of s.params || []) await fillParam(page, p);
      await shoot(page, 'form');

      step('trigger');
      const invalid = dialog.locator('[data-invalid], [aria-invalid="true"]');
      if (await invalid.count()) {
        const names = await invalid.evaluateAll((els) => els.map((e) => e.getAttribute('name') || e.id));
        throw new Error(`the trigger form reports invalid fields: ${names.join(', ')}`);
      }
      const button = dialog.getByRole('button', { name: 'Trigger', exact: true });
      if (await button.isDisabled()) throw new Error('the Trigger button is disabled: the form has an invalid or missing field');
      const posted = page.waitForResponse((r) => /\/dagRuns$/.test(new URL(r.url()).pathname) && r.request().method() === 'POST');
      await button.click();
      const resp = await posted;
      if (resp.status() >= 300) throw new Error(`trigger answered ${resp.status()}: ${await resp.text()}`);
      const run = await resp.json();
      result.run_id = run.dag_run_id;
      result.conf = run.conf;
      const runUrl = `${s.base_url}/dags/${s.dag_id}/runs/${encodeURIComponent(run.dag_run_id)}`;
      await page.waitForURL((u) => u.pathname.includes('/runs/'), { timeout: 30000 });
      result.state = await waitForRun(page, s, runUrl);
      // the grid polls on its own; reload once so every cell shows its final state
      await page.reload();
      await page.getByTestId('header-card').getByTestId('state-badge').waitFor();
      await page.waitForTimeout(1000);
      await shoot(page, 'grid');

      if (s.task) {
        const t = s.task;
        const mapped = t.map_index !== undefined && t.map_index !== null;
        const taskUrl = `${runUrl}/tasks/${t.task_id}${mapped ? `/mapped/${t.map_index}` : ''}`;
        step(`open the log of ${t.task_id}${mapped ? `[${t.map_index}]` : ''}`);
        await page.goto(taskUrl);
        const want = t.log_contains || [];
        const deadline = Date.now() + 60000;
        let text = '';
        for (;;) {
          text = await page.locator('body').innerText();
          if (want.every((w) => text.includes(w))) break;
          if (Date.now() > deadline) {
            const missing = want.filter((w) => !text.includes(w));
            throw new Error(`the log page of ${t.task_id} never showed ${JSON.stringify(missing)}`);
          }
          await page.waitForTimeout(1000);
        }
        result.log_found = want;
        await shoot(page, 'log');
      }
    }
  } catch (err) {
    if (page && s.failure_screenshot) {
      await page.screenshot({ path: s.failure_screenshot, fullPage: true }).catch(() => {});
      step(`screenshot of the failure: ${s.failure_screenshot}`);
    }
    throw err;
  } finally {
    await ctx.close();
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((err) => {
  process.stderr.write(`browser | error: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
