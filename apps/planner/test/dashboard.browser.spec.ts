import { existsSync, mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { ClientProfile, GenerationOutcome, ServerLoad, Subjects, type ClientPlan } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { clientProfile, eventually, planOutcome, serverLoad, stageTimes } from '@tandem/testkit';
import { PlannerDashboard, type DashboardSource } from '../src';
import { SHORT_CLASS, startLivePlanner, THREE_STAGES, type LivePlanner } from './fixtures';

// The dashboard in a real browser (Debian's chromium driven by playwright-core) against a real
// planner fed over a real nats-server: the page shows a client's plan with its stages coloured
// by side, follows a change without a reload, shows hostile strings as text, and leaves a
// screenshot in artifacts/.

/** Debian's chromium (apt-get install chromium; CI's .ci/run installs it), or CHROMIUM_BIN. */
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ARTIFACTS = path.resolve(__dirname, '../../../artifacts');
/** A client class that is markup (the planner takes any client class of up to 64 characters). */
const HOSTILE_CLASS = `<img src=x onerror="document.title='pwned'">`;
/** A client id that is markup: the planner refuses it (ID_PATTERN), the page escapes it anyway. */
const HOSTILE_ID = '"><img src=x onerror=alert(1)><script>window.pwned=1</script>';

const profile = (clientId: string, ms: number[], clientClass = 'phone'): ClientProfile => clientProfile({ clientId, clientClass, stages: stageTimes(ms) });
const info = { modelId: 'm', algorithm: 'dp', stages: THREE_STAGES.map((s) => s.name), classes: [SHORT_CLASS], attainmentTarget: 0.9 };
const silent = createLogger({ name: 'test', level: 'silent' });

/** The placement the page shows for `clientId`'s one class, and the side of each of its stages. */
async function shownPlacement(page: Page, clientId: string): Promise<{ placement: string | null; sides: string[] }> {
  const strip = page.locator(`[data-client="${clientId}"] [data-placement]`);
  return {
    placement: await strip.getAttribute('data-placement'),
    sides: await strip.locator('[data-side]').evaluateAll((els) => els.map((e) => e.getAttribute('data-side') ?? '')),
  };
}

describe('planner dashboard in a real browser', () => {
  let live: LivePlanner;
  let dashboard: PlannerDashboard;
  let hostile: PlannerDashboard;
  let browser: Browser;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(
        `chromium is missing at ${CHROMIUM}: the dashboard's browser test needs Debian's chromium (apt-get install chromium; CI's .ci/run installs it) or CHROMIUM_BIN naming another chromium`,
      );
    }
    live = await startLivePlanner();
    dashboard = new PlannerDashboard({ source: live.server, info, log: silent, host: '127.0.0.1', port: 0, intervalMs: 50 });
    await dashboard.start();
    // Headless, without chromium's sandbox (it refuses to run as root with it, as in CI containers).
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
  }, 30_000);

  afterAll(async () => {
    await browser?.close();
    await hostile?.stop();
    await dashboard?.stop();
    await live?.stop();
  });

  it("shows a client's plan by side, follows a change live, and keeps a screenshot", async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(dashboard.url ?? '');
    const load = serverLoad({ utilisation: 0.42, queueDepth: 2, activeSessions: 3 });
    live.nc.publish(Subjects.serverLoad(load.serverId), ServerLoad.encode(load).finish());
    live.nc.publish(Subjects.clientProfile('dev-a'), ClientProfile.encode(profile('dev-a', [1, 5, 100])).finish());
    await page.waitForSelector('[data-client="dev-a"] [data-placement="CCS"]', { timeout: 10_000 });
    expect(await shownPlacement(page, 'dev-a')).toEqual({ placement: 'CCS', sides: ['client', 'client', 'server'] });
    expect(await page.locator('body').getAttribute('data-status')).toBe('live');
    expect(await page.locator('[data-field="utilisation"]').textContent()).toBe('42 %');
    expect(await page.locator('[data-client="dev-a"] [data-field="client-class"]').textContent()).toBe('class phone');

    // A change published over NATS reaches the open page: no reload (the mark survives).
    await page.evaluate('window.tandemMark = 42');
    const updates = Number(await page.locator('body').getAttribute('data-updates'));
    live.nc.publish(Subjects.clientProfile('dev-a'), ClientProfile.encode(profile('dev-a', [1, 5, 1])).finish());
    await page.waitForSelector('[data-client="dev-a"] [data-placement="CCC"]', { timeout: 10_000 });
    expect(await shownPlacement(page, 'dev-a')).toEqual({ placement: 'CCC', sides: ['client', 'client', 'client'] });
    expect(await page.evaluate('window.tandemMark')).toBe(42);
    expect(Number(await page.locator('body').getAttribute('data-updates'))).toBeGreaterThan(updates);

    // A second client, whose head stage is too slow on the device: it runs there on the server.
    live.nc.publish(Subjects.clientProfile('dev-b'), ClientProfile.encode(profile('dev-b', [1, 5, 100], 'laptop')).finish());
    await page.waitForSelector('[data-client="dev-b"] [data-placement="CCS"]', { timeout: 10_000 });
    expect(await page.locator('[data-field="clients-total"]').textContent()).toBe('2 with a plan');

    // Outcomes of the plan in force: the class's attainment and predicted / observed latency appear.
    const plan = live.server.plans().find((p) => p.clientId === 'dev-a') as ClientPlan;
    for (let i = 0; i < 4; i++) {
      // Measured as predicted: no correction, so the plan in force (and its attainment) stays.
      const o = planOutcome(plan);
      live.nc.publish(Subjects.outcome('dev-a'), GenerationOutcome.encode(o).finish());
    }
    await page.waitForSelector('#classes [data-class="short"] [data-attainment]', { timeout: 10_000 });
    expect(await page.locator('#classes [data-class="short"] [data-attainment]').getAttribute('data-attainment')).toBe('1');

    mkdirSync(ARTIFACTS, { recursive: true });
    const shot = path.join(ARTIFACTS, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    process.stdout.write(`dashboard screenshot: ${shot}\n`);
    expect(existsSync(shot)).toBe(true);
    expect(errors).toEqual([]);
    await page.close();
  }, 30_000);

  it('shows hostile client classes and ids as text: no element, no script', async () => {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(dashboard.url ?? '');
    // A client id that is markup never reaches the page: the planner drops it (counted).
    const dropped = live.server.counters.badMessages;
    live.nc.publish(Subjects.clientProfile('dev-x'), ClientProfile.encode(profile(HOSTILE_ID, [1, 5, 100])).finish());
    // A client class that is markup is taken, and shown as text.
    live.nc.publish(Subjects.clientProfile('dev-h'), ClientProfile.encode(profile('dev-h', [1, 5, 100], HOSTILE_CLASS)).finish());
    await page.waitForSelector('[data-client="dev-h"] [data-placement]', { timeout: 10_000 });
    expect(await page.locator('[data-client="dev-h"] [data-field="client-class"]').textContent()).toBe(`class ${HOSTILE_CLASS}`);
    await eventually(() => live.server.counters.badMessages > dropped, { what: 'the hostile client id dropped', timeoutMs: 5000 });
    expect(await page.locator('img').count()).toBe(0);
    expect(await page.title()).toBe('Tandem planner');

    // Escaping does not rest on the planner's checks: a state holding markup everywhere it holds a string.
    const source: DashboardSource = {
      plans: () => [
        {
          clientId: HOSTILE_ID,
          epoch: 7,
          algorithm: HOSTILE_ID,
          createdUnixMs: Date.now(),
          executor: { id: HOSTILE_ID, address: HOSTILE_ID },
          alternates: [],
          classes: [{ ...live.server.plans()[0].classes[0], name: HOSTILE_ID, placement: 'C<S' }],
        },
      ],
      observations: () => [],
      load: serverLoad({ serverId: HOSTILE_ID }),
      followedExecutor: HOSTILE_ID,
      executorIds: [HOSTILE_ID],
      executorSummaries: () => [
        { id: HOSTILE_ID, address: HOSTILE_ID, clients: 1, utilisation: 0.5, draining: false, lastReportUnixMs: Date.now() },
        { id: `${HOSTILE_ID}2`, address: '', clients: 0, utilisation: 0, draining: true, lastReportUnixMs: Date.now() },
      ],
      currentObjective: HOSTILE_ID,
      shedClasses: [`${HOSTILE_ID}/${HOSTILE_ID}`],
      workScale: 1,
      clientClassOf: () => HOSTILE_CLASS,
      counters: { profiles: 1, loads: 1, outcomes: 0, badMessages: 0 },
    };
    hostile = new PlannerDashboard({
      source,
      info: { ...info, modelId: HOSTILE_ID, algorithm: HOSTILE_ID, classes: [{ ...SHORT_CLASS, name: HOSTILE_ID }] },
      log: silent,
      host: '127.0.0.1',
      port: 0,
    });
    await hostile.start();
    await page.goto(hostile.url ?? '');
    await page.waitForSelector('[data-field="client-id"]', { timeout: 10_000 });
    expect(await page.locator('[data-field="client-id"]').textContent()).toBe(HOSTILE_ID);
    expect(await page.locator('[data-field="server-id"]').textContent()).toBe(HOSTILE_ID);
    expect(await page.locator('#shed').textContent()).toContain(`${HOSTILE_ID}/${HOSTILE_ID}`);
    // Several executors: one row each, ids and addresses as text; the client card names its executor.
    expect(await page.locator('[data-executor]').count()).toBe(2);
    expect(await page.locator('[data-executor] td:first-child').allTextContents()).toEqual([HOSTILE_ID, `${HOSTILE_ID}2`]);
    expect(await page.locator('[data-executor] [data-field="executor-clients"]').allTextContents()).toEqual(['1', '0']);
    expect(await page.locator('[data-field="client-executor"]').textContent()).toBe(` on ${HOSTILE_ID}`);
    expect(await page.locator('[data-client] [data-side]').evaluateAll((els) => els.map((e) => e.getAttribute('data-side')))).toEqual([
      'client',
      'unknown',
      'server',
    ]);
    expect(await page.locator('img, script:not([src])').count()).toBe(0);
    expect(await page.evaluate('typeof window.pwned')).toBe('undefined');
    expect(await page.title()).toBe('Tandem planner');
    expect(errors).toEqual([]);
    await page.close();
  }, 30_000);
});
