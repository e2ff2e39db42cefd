/**
 * Soak: many concurrent sessions against one executor for a long time (issue 9). Reports
 * leaked sessions (GetStatus active sessions once all closed), RSS over time and its growth
 * after warm-up (must stay under 5 %), p99 step latency per minute; writes soak.json,
 * soak-rss.svg and soak-latency.svg. The code path is tools/loadtest/src/soak.ts, which a
 * CI-sized test (tools/loadtest/test/soak.int.spec.ts) runs too.
 *
 *   npm run soak -- [--sessions 200] [--minutes 10] [--warmup-minutes 1] [--bucket-s 60] [--sample-s 5]
 *        [--preset small] [--prompt 32] [--new 32] [--executor-env K=V,K=V] [--out .tandem/soak]
 *
 * Exits 1 when a session leaked or RSS grew 5 % or more after warm-up.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { formatSoakReport, runSoak } from '@tandem/loadtest';
import { arg, benchModel } from './bench-kit';

async function main(): Promise<void> {
  const preset = arg('preset', 'small');
  const dir = await benchModel(preset);
  const minutes = Number(arg('minutes', '10'));
  const env = Object.fromEntries(
    arg('executor-env', '')
      .split(',')
      .filter(Boolean)
      .map((kv) => {
        const i = kv.indexOf('=');
        return [kv.slice(0, i), kv.slice(i + 1)];
      }),
  );
  const out = arg('out', path.join('.tandem', 'soak'));
  process.stderr.write(
    `soak: ${os.cpus().length} cpus, load average ${os
      .loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')}, executor env ${JSON.stringify(env)}\n`,
  );
  const r = await runSoak({
    modelDir: dir,
    sessions: Number(arg('sessions', '200')),
    durationMs: minutes * 60_000,
    warmupMs: Number(arg('warmup-minutes', String(Math.min(1, minutes / 5)))) * 60_000,
    bucketMs: Number(arg('bucket-s', '60')) * 1000,
    sampleMs: Number(arg('sample-s', '5')) * 1000,
    promptTokens: Number(arg('prompt', '32')),
    newTokens: Number(arg('new', '32')),
    executorEnv: env,
    outDir: out,
    onProgress: (l) => process.stderr.write(`${l}\n`),
  });
  process.stdout.write(`${formatSoakReport(r)}\nwritten: ${path.join(out, 'soak.json')}, soak-rss.svg, soak-latency.svg\n`);
  if (r.leakedSessions !== 0 || !(r.rssGrowthEnd < 0.05) || r.executorExitedEarly) process.exit(1);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
