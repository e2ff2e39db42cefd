import { fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { dirname, join } from 'node:path';

/** The versions of the gRPC server reflection protocol a server may serve. */
export type ReflectionVersion = 'v1' | 'v1alpha';

/** An error the server answered inside the reflection stream (ErrorResponse): its gRPC code and message. */
export class ReflectionAnswerError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(`reflection answered ${grpc.status[code] ?? code}: ${message}`);
    this.name = 'ReflectionAnswerError';
  }
}

interface ReflectionResponse {
  listServicesResponse?: { service: { name: string }[] };
  fileDescriptorResponse?: { fileDescriptorProto: Buffer[] };
  errorResponse?: { errorCode: number; errorMessage: string };
}

type ReflectionStub = grpc.Client & {
  ServerReflectionInfo(metadata: grpc.Metadata, options: grpc.CallOptions): grpc.ClientDuplexStream<object, ReflectionResponse>;
};

/** The reflection client constructor of `version`, from the protocol's own .proto (the one @grpc/reflection serves). */
function stubOf(version: ReflectionVersion): grpc.ServiceClientConstructor {
  const root = join(dirname(require.resolve('@grpc/reflection')), '..', 'proto');
  const def = loadSync(join(root, `grpc/reflection/${version}/reflection.proto`), {
    includeDirs: [root],
    longs: String,
    enums: Number,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    grpc: { reflection: Record<ReflectionVersion, { ServerReflection: grpc.ServiceClientConstructor }> };
  };
  return pkg.grpc.reflection[version].ServerReflection;
}

/**
 * A client of gRPC server reflection built from the protocol's proto (as grpcurl is), not from
 * the server's code: each call opens one ServerReflectionInfo stream, sends one request and
 * reads its one answer. Every call has a deadline.
 */
export class ReflectionClient {
  private readonly stub: ReflectionStub;

  /**
   * @param options client options, as a generated client takes them (e.g. `clientOptions(security)`,
   *   whose interceptor sends the bearer token).
   * @param opts the protocol version asked (default v1) and each call's deadline (default 5000 ms).
   */
  constructor(
    address: string,
    credentials: grpc.ChannelCredentials,
    options: Partial<grpc.ClientOptions> = {},
    private readonly opts: { version?: ReflectionVersion; deadlineMs?: number } = {},
  ) {
    const Stub = stubOf(opts.version ?? 'v1');
    this.stub = new Stub(address, credentials, options) as unknown as ReflectionStub;
  }

  /** The fully-qualified names of the services the server describes. */
  async listServices(): Promise<string[]> {
    const r = await this.ask({ listServices: '*' });
    return (r.listServicesResponse?.service ?? []).map((s) => s.name);
  }

  /** The file that defines `symbol` (a service, method, message or enum), first, then the files it imports. */
  async fileContainingSymbol(symbol: string): Promise<FileDescriptorProto[]> {
    return this.files(await this.ask({ fileContainingSymbol: symbol }));
  }

  /** The file named `name` (as its descriptor names it), first, then the files it imports. */
  async fileByFilename(name: string): Promise<FileDescriptorProto[]> {
    return this.files(await this.ask({ fileByFilename: name }));
  }

  close(): void {
    this.stub.close();
  }

  private files(r: ReflectionResponse): FileDescriptorProto[] {
    return (r.fileDescriptorResponse?.fileDescriptorProto ?? []).map((b) => fromBinary(FileDescriptorProtoSchema, new Uint8Array(b)));
  }

  /** One request on its own stream. @throws the call's ServiceError, or ReflectionAnswerError for an ErrorResponse. */
  private ask(request: object): Promise<ReflectionResponse> {
    return new Promise((resolve, reject) => {
      const call = this.stub.ServerReflectionInfo(new grpc.Metadata(), { deadline: Date.now() + (this.opts.deadlineMs ?? 5000) });
      let answer: ReflectionResponse | undefined;
      call.on('data', (m: ReflectionResponse) => {
        answer ??= m;
        call.end();
      });
      call.on('error', reject);
      call.on('end', () => {
        if (!answer) reject(new Error('the reflection stream ended without an answer'));
        else if (answer.errorResponse) reject(new ReflectionAnswerError(answer.errorResponse.errorCode, answer.errorResponse.errorMessage));
        else resolve(answer);
      });
      call.write({ host: '', ...request });
    });
  }
}
