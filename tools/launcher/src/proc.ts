import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

// What a process used, from /proc (Linux; NaN when it cannot be read, e.g. the process is gone),
// and pinning processes to CPUs with taskset.

/** Whether `taskset` can be run here. */
export function hasTaskset(): boolean {
  return spawnSync('taskset', ['-p', String(process.pid)], { encoding: 'utf8' }).status === 0;
}

let ticks: number | undefined;
/** Clock ticks per second of /proc/<pid>/stat times (`getconf CLK_TCK`, normally 100). */
export function clockTicks(): number {
  if (ticks === undefined) {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    const n = Number(r.stdout?.trim());
    ticks = r.status === 0 && Number.isFinite(n) && n > 0 ? n : 100;
  }
  return ticks;
}

/** User + system CPU time of a process (all its threads) so far, s. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which is in parentheses and may hold spaces).
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state); utime is field 14, stime field 15.
    return (Number(f[11]) + Number(f[12])) / clockTicks();
  } catch {
    return NaN;
  }
}

/**
 * Time the threads of a process spent runnable but waiting for a CPU so far, s
 * (/proc/<pid>/task/<tid>/schedstat, second field, summed over threads; NaN without
 * schedstat). Grows when the process's core is shared with other work.
 */
export function runQueueWaitSeconds(pid: number): number {
  try {
    let ns = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]);
      } catch {
        // The thread ended between the listing and the read: its time is gone with it.
      }
    }
    return ns / 1e9;
  } catch {
    return NaN;
  }
}

/**
 * Time CPU `cpu` spent busy so far, s: every state of its /proc/stat line but idle and iowait
 * (user, nice, system, irq, softirq, steal; guest time is inside user). With a process pinned
 * alone to that CPU, this minus the process's own CPU time is what other work (other
 * processes, interrupts, the hypervisor's steal) took from its core. NaN when unreadable.
 */
export function cpuBusySeconds(cpu: number): number {
  try {
    const line = readFileSync('/proc/stat', 'utf8')
      .split('\n')
      .find((l) => l.startsWith(`cpu${cpu} `));
    if (!line) return NaN;
    const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
    return (user + nice + system + irq + softirq + (steal || 0)) / clockTicks();
  } catch {
    return NaN;
  }
}

/** Resident set of a process, bytes. */
export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** The CPU affinity list of a process (e.g. "0,1" or "0-1"), or undefined without taskset. */
export function affinityOf(pid: number): string | undefined {
  const r = spawnSync('taskset', ['-cp', String(pid)], { encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  return r.stdout.split(':').pop()?.trim();
}

/** Pins every thread of a process to `cpus` (a taskset list). Returns false when it could not. */
export function pinProcess(pid: number, cpus: string): boolean {
  return spawnSync('taskset', ['-a', '-cp', cpus, String(pid)], { encoding: 'utf8' }).status === 0;
}
