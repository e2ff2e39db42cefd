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
