/**
 * The emulated devices of the demo and the planner configuration that gives them different
 * placements. All of it is EMULATION on one machine: an agent pads each local stage to
 * `slowdown` × its real time and delays each transfer by the link's latency and throughput.
 */
export interface DemoDevice {
  /** AGENT_ID. */
  readonly id: string;
  /** AGENT_CLASS: selects the device's SLAs in PLANNER_SLA_OVERRIDES. */
  readonly clientClass: string;
  readonly description: string;
  /** AGENT_SLOWDOWN. */
  readonly slowdown: number;
  /** AGENT_LINK_LATENCY_MS, one way. */
  readonly linkLatencyMs: number;
  /** AGENT_LINK_UP_BYTES_PER_MS. */
  readonly upBytesPerMs: number;
  /** AGENT_LINK_DOWN_BYTES_PER_MS. */
  readonly downBytesPerMs: number;
}

export const DEMO_DEVICES: readonly DemoDevice[] = [
  {
    id: 'laptop',
    clientClass: 'laptop',
    description: 'fast laptop on office Wi-Fi',
    slowdown: 1.5,
    linkLatencyMs: 5,
    upBytesPerMs: 20_000,
    downBytesPerMs: 50_000,
  },
  {
    id: 'phone',
    clientClass: 'phone',
    description: 'mid-range phone on a mobile network',
    slowdown: 10,
    linkLatencyMs: 15,
    upBytesPerMs: 2500,
    downBytesPerMs: 10_000,
  },
  {
    id: 'kiosk',
    clientClass: 'kiosk',
    description: 'old kiosk terminal on a slow uplink',
    slowdown: 30,
    linkLatencyMs: 30,
    upBytesPerMs: 1000,
    downBytesPerMs: 4000,
  },
];

/** PLANNER_REQUEST_CLASSES: the demo's prompts fall in `chat`. */
export const DEMO_REQUEST_CLASSES = [
  { name: 'chat', maxPromptTokens: 32, expectedNewTokens: 16, slaMs: 1000 },
  { name: 'document', maxPromptTokens: 512, expectedNewTokens: 64, slaMs: 20_000 },
];

/** PLANNER_SLA_OVERRIDES: what each device class is promised. */
export const DEMO_SLA_OVERRIDES: Record<string, Record<string, number>> = {
  laptop: { chat: 1000 },
  phone: { chat: 900 },
  kiosk: { chat: 1300 },
};
