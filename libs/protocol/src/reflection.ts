import type { Server } from '@grpc/grpc-js';
import { loadFileDescriptorSetFromBuffer, type PackageDefinition } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { FILE_DESCRIPTOR_SET_BASE64 } from './generated/descriptor-set';

/** The standard health service's name (grpc.health.v1), which every Tandem server serves. */
export const HEALTH_SERVICE_NAME = 'grpc.health.v1.Health';

let definition: PackageDefinition | undefined;

/**
 * Every file of proto/ as a proto-loader PackageDefinition, from the descriptor set generated
 * with the code (generated/descriptor-set.ts, `npm run generate`). Parsed once, on first use.
 */
export function protoPackageDefinition(): PackageDefinition {
  definition ??= loadFileDescriptorSetFromBuffer(Buffer.from(FILE_DESCRIPTOR_SET_BASE64, 'base64'));
  return definition;
}

/** Whether `def[name]` is a service (a record of methods) rather than a message or an enum type. */
function isService(def: PackageDefinition, name: string): boolean {
  const v = def[name] as { format?: unknown } | undefined;
  return v !== undefined && typeof v.format !== 'string';
}

/** The fully-qualified names of the services proto/ defines, sorted. */
export function protoServiceNames(): string[] {
  const def = protoPackageDefinition();
  return Object.keys(def)
    .filter((k) => isService(def, k))
    .sort();
}

/**
 * Adds gRPC server reflection (grpc.reflection.v1 and grpc.reflection.v1alpha, what grpcurl,
 * Postman and grpcui ask) to `server`, describing `services` (fully-qualified names, e.g.
 * 'tandem.executor.v1.ExecutorService' and {@link HEALTH_SERVICE_NAME}) with every message and
 * file they use, from proto/. Call it before the server binds, beside its addService calls; a
 * service added to a server is one more name here. Reflection calls go through the server's
 * interceptors like any other (with bearer tokens on, they need a token).
 * @throws Error naming a service that proto/ does not define (a typo would otherwise hide it).
 */
export function addReflection(server: Pick<Server, 'addService'>, services: readonly string[]): void {
  const known = protoServiceNames();
  const unknown = services.filter((s) => !known.includes(s));
  if (unknown.length > 0)
    throw new Error(`reflection services must be defined in proto/ (${known.join(', ')}), given ${unknown.map((s) => `'${s}'`).join(', ')}`);
  new ReflectionService(protoPackageDefinition(), { services: [...services] }).addToServer(server);
}
