import { request } from 'node:http';

/** GET (or `method`) http://host:port/metrics (a fresh connection); resolves with the status, content type and body. */
export function scrapeMetrics(port: number, host = '127.0.0.1', path = '/metrics', method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, path, method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * The value of one sample in a Prometheus text exposition: `series` is the metric name with its
 * labels as printed (e.g. `tandem_x_total{status="ok"}`; labels in the order the registry prints
 * them), or the bare name. Undefined when the exposition has no such sample.
 */
export function sampleValue(text: string, series: string): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    if (i > 0 && line.slice(0, i) === series) return Number(line.slice(i + 1));
  }
  return undefined;
}

/** The exposition scraped from `port` (GET /metrics); throws naming the status when it is not 200. */
export async function scrapeText(port: number, host = '127.0.0.1'): Promise<string> {
  const r = await scrapeMetrics(port, host);
  if (r.status !== 200) throw new Error(`GET http://${host}:${port}/metrics answered ${r.status}, not 200: ${r.body.slice(0, 200)}`);
  return r.body;
}

/** {@link sampleValue}, throwing with the exposition when the sample is absent. */
export function requireSample(text: string, series: string): number {
  const v = sampleValue(text, series);
  if (v === undefined) throw new Error(`no sample ${series} in:\n${text}`);
  return v;
}

/**
 * Expects each sample of `expected` (series as for {@link sampleValue} → value) in the exposition
 * with that value: one jest assertion over them all, whose diff names every series that differs;
 * a series absent from the exposition throws ({@link requireSample}).
 */
export function expectSamples(text: string, expected: Readonly<Record<string, number>>): void {
  const actual = Object.fromEntries(Object.keys(expected).map((series) => [series, requireSample(text, series)]));
  expect(actual).toEqual(expected);
}
