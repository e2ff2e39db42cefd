import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { HealthClient, ServingStatus } from '@tandem/protocol';
import { makeTempModel, type TempModel } from '@tandem/testkit';
import { launchService, type ServiceProcess } from '../src';

const REPO_ROOT = join(__dirname, '../../..');

// What the deploy image runs: `npm run build` (tools/scripts/build.mjs), then plain node on the
// compiled mains, with no TypeScript loader. Built once, into a temporary directory.
describe('the compiled services (npm run build)', () => {
  let out: string;
  let model: TempModel;

  beforeAll(async () => {
    // Inside the repository (tmp/ is ignored by git): the compiled code finds its packages in node_modules.
    mkdirSync(join(REPO_ROOT, 'tmp'), { recursive: true });
    out = mkdtempSync(join(REPO_ROOT, 'tmp', 'build-'));
    const build = spawnSync(process.execPath, [join(REPO_ROOT, 'tools/scripts/build.mjs'), '--out', out], { encoding: 'utf8' });
    if (build.status !== 0) throw new Error(`build.mjs exited with ${build.status}:\n${build.stdout}${build.stderr}`);
    model = await makeTempModel();
  }, 60_000);

  afterAll(() => {
    rmSync(out, { recursive: true, force: true });
    model?.remove();
  });

  it('the executor loads the model in its worker thread and reports SERVING on the standard health service', async () => {
    let executor: ServiceProcess | undefined;
    const env = { MODEL_DIR: model.dir, NATS_URL: 'off', EXECUTOR_ADDR: '127.0.0.1:0', EXECUTOR_ENGINE: 'worker' };
    try {
      executor = await launchService({ name: 'compiled-executor', app: 'server-executor', env, compiledDir: out });
      const hc = new HealthClient(executor.address, grpc.credentials.createInsecure());
      try {
        const status = await new Promise<ServingStatus>((resolve, reject) =>
          hc.check({ service: 'tandem.executor.v1.ExecutorService' }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e, r) =>
            e ? reject(e) : resolve(r.status),
          ),
        );
        expect(status).toBe(ServingStatus.SERVING);
      } finally {
        hc.close();
      }
      expect(await executor.stop()).toEqual({ killed: false });
    } finally {
      await executor?.kill();
    }
  }, 30_000);

  it('every service of deploy/docker-compose.yml runs a main that the build emits', () => {
    const compose = readFileSync(join(REPO_ROOT, 'deploy/docker-compose.yml'), 'utf8');
    const mains = [...new Set([...compose.matchAll(/command: \["dist\/(apps\/[a-z-]+\/src\/main\.js)"\]/g)].map((m) => m[1]))];
    expect(mains.sort()).toEqual(['apps/client-agent/src/main.js', 'apps/planner/src/main.js', 'apps/server-executor/src/main.js']);
    for (const main of mains) expect(existsSync(join(out, main))).toBe(true);
  });

  it.each(['server-executor', 'planner', 'client-agent'])('compiled %s exits 2 naming the variable when MODEL_DIR is missing', (app) => {
    const r = spawnSync(process.execPath, [join(out, 'apps', app, 'src', 'main.js')], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH ?? '' },
      timeout: 20_000,
    });
    expect({ status: r.status, stderr: r.stderr }).toEqual({
      status: 2,
      stderr: expect.stringContaining(`${app}: invalid configuration:\n  MODEL_DIR is required`) as string,
    });
  });
});
