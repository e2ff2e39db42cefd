import type { DemoAgentReport, DemoReport, DemoRun } from '@tandem/demo';
import { ListPlansResponse } from '@tandem/protocol';
import { formatPlans } from './plans';
import { formatTable, ms } from './table';

function sides(placement: string): string {
  const c = [...placement].filter((x) => x === 'C').length;
  return `${c} on the device, ${placement.length - c} on the server`;
}

function slaVerdict(r: DemoRun): string {
  if (r.slaMet === null) return 'no SLA (no plan yet)';
  return `${ms(r.totalMs)} ms vs SLA ${ms(r.slaMs)} ms: ${r.slaMet ? 'met' : 'MISSED'}`;
}

function agentBlock(a: DemoAgentReport): string {
  const head =
    `${a.device} (class ${a.clientClass}): ${a.description}; emulated ${a.slowdown}x slower compute, ` +
    `${a.linkLatencyMs} ms one-way latency, up ${a.upBytesPerMs} / down ${a.downBytesPerMs} bytes/ms`;
  const runs = a.runs.map((r) =>
    [
      `  run ${r.run}: plan epoch ${r.planEpoch}, request class ${r.requestClass}, placement ${r.placement} (${sides(r.placement)})`,
      `         ${r.ids.length} tokens ${JSON.stringify(r.text)}  ids ${r.ids.join(' ')}`,
      `         TTFT ${ms(r.ttftMs)} ms, end-to-end ${slaVerdict(r)}; server compute ${ms(r.serverComputeMs)} ms, device compute ${ms(r.clientComputeMs)} ms`,
    ].join('\n'),
  );
  return [head, ...runs].join('\n');
}

function summaryTable(report: DemoReport): string {
  const rows = report.agents.flatMap((a) =>
    a.runs.map((r) => [
      a.device,
      a.clientClass,
      String(r.run),
      String(r.planEpoch),
      r.placement,
      ms(r.ttftMs),
      ms(r.totalMs),
      r.slaMs ? ms(r.slaMs) : '-',
      r.slaMet === null ? '-' : r.slaMet ? 'met' : 'MISSED',
      ms(r.serverComputeMs),
      ms(r.clientComputeMs),
    ]),
  );
  return formatTable(['device', 'class', 'run', 'plan epoch', 'placement', 'TTFT ms', 'e2e ms', 'SLA ms', 'SLA', 'server ms', 'device ms'], rows, {
    rightAlign: [5, 6, 7, 9, 10],
  });
}

/** The demo's report as text, for a terminal. */
export function formatDemoReport(report: DemoReport): string {
  const m = report.model;
  const runs = report.agents.reduce((n, a) => n + a.runs.length, 0);
  const met = report.agents.reduce((n, a) => n + a.runs.filter((r) => r.slaMet === true).length, 0);
  const lines = [
    `Tandem demo: model ${m.preset ?? m.dir} (${m.stages} stages: ${m.stageNames[0]}, ${m.stageNames.slice(1, -1).length} block stages, ${m.stageNames[m.stageNames.length - 1]})`,
    `prompt ${JSON.stringify(report.prompt)}, ${report.tokens} new tokens, greedy; NATS ${report.nats.url}${report.nats.startedHere ? ' (started by the demo, one user per service)' : ''}`,
    'placement: one letter per stage, in order: C runs on the device, S on the server-executor',
    '',
    ...report.agents.flatMap((a) => [agentBlock(a), '']),
    'summary',
    summaryTable(report),
    '',
    `${met}/${runs} generations met their SLA; ` +
      (report.identicalOutputs ? 'all produced the same tokens (greedy decoding does not depend on where the stages run)' : 'NOT all produced the same tokens'),
    '',
    "the planner's plans at the end (tandem plans):",
    formatPlans(ListPlansResponse.fromJSON(report.plans)),
    '',
    `services stopped${report.killed.length ? ` (killed: ${report.killed.join(', ')})` : ''}; total ${(report.elapsedMs / 1000).toFixed(1)} s` +
      (report.logDir ? `; logs in ${report.logDir}` : ''),
  ];
  return `${lines.join('\n')}\n`;
}
