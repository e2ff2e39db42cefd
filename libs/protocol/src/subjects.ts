/**
 * NATS subjects. Payloads are the protobuf messages of tandem.telemetry.v1, encoded
 * with their generated `encode`. Never write these strings anywhere else.
 */
export const Subjects = {
  /** Root of all Tandem telemetry; subscribe to `${telemetryRoot}.>` for everything. */
  telemetryRoot: 'tandem.telemetry.v1',
  /** A client-agent's ClientProfile, one subject per client. */
  clientProfile: (clientId: string): string => `tandem.telemetry.v1.client.${subjectToken(clientId)}`,
  /** Wildcard for every client's profile. */
  allClientProfiles: 'tandem.telemetry.v1.client.*',
  /** A server-executor's ServerLoad, one subject per executor. */
  serverLoad: (serverId: string): string => `tandem.telemetry.v1.server.${subjectToken(serverId)}`,
  /** Wildcard for every executor's load. */
  allServerLoads: 'tandem.telemetry.v1.server.*',
  /** A client-agent's GenerationOutcome messages (one per finished generation), one subject per client. */
  outcome: (clientId: string): string => `tandem.telemetry.v1.outcome.${subjectToken(clientId)}`,
  /** Wildcard for every client's outcomes. */
  allOutcomes: 'tandem.telemetry.v1.outcome.*',
} as const;

/** Ids allowed as one NATS subject token: letters, digits, `-` and `_`, 1..64 chars. */
export const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

function subjectToken(id: string): string {
  if (!ID_PATTERN.test(id)) throw new Error(`id must match ${ID_PATTERN}, given '${id}'`);
  return id;
}
