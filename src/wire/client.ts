/**
 * A small PostgreSQL replication client over node:net: startup with trust, cleartext, md5 or SCRAM-SHA-256,
 * simple queries, and START_REPLICATION streams consumed as an async iterator of CopyData payloads. Used by
 * tests and by WAL ingest from a real primary.
 *
 * Streams are built for volume: payloads are zero-copy slices of socket chunks (a message is copied only when it
 * straddles chunks), and the socket pauses while more than STREAM_BUFFER_BYTES_MAX wait for the consumer.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { connect, isIP, type Socket } from 'node:net';
import { checkServerIdentity, connect as connectTls, type ConnectionOptions, type PeerCertificate } from 'node:tls';
import { WalcastError } from '../errors.js';
import {
  MAX_BACKEND_MESSAGE_BYTES,
  decodeAuthentication,
  decodeBackendKeyData,
  decodeCommandComplete,
  decodeDataRow,
  decodeNotice,
  decodeParameterStatus,
  decodeRowDescription,
  decodeSaslMechanisms,
  type ServerNotice,
} from './backend-parser.js';
import { PacketFramer } from './framer.js';
import { frontendCopyData, frontendCopyDone, passwordMessage, query, saslInitialResponse, saslResponse, startupMessage, terminate } from './frontend-serializer.js';
import { AuthCode, BackendCode, LENGTH_BYTES } from './messages.js';
import { SCRAM_MECHANISM, ScramClientExchange } from './scram.js';

/** Payload bytes a stream buffers for a slow consumer before the socket is paused. */
export const STREAM_BUFFER_BYTES_MAX = 4 * 1024 * 1024;
/** The socket resumes once the consumer has drained the buffer below this. */
const STREAM_BUFFER_BYTES_RESUME = STREAM_BUFFER_BYTES_MAX / 2;
/**
 * After CopyBothResponse, PostgreSQL reports a bad start (ahead of flush, segment removed) as an immediate
 * ErrorResponse (walsender.c StartReplication). startReplication waits this long for such an error, or for the
 * first data, before it hands out the stream; a caught-up server may otherwise send nothing for 30 s.
 */
export const START_ERROR_GRACE_MS = 200;
/** end() waits this long for the server to close after Terminate, then destroys the socket. */
const END_GRACE_MS = 1000;

assert.ok(STREAM_BUFFER_BYTES_RESUME < STREAM_BUFFER_BYTES_MAX);

export interface ReplicationClientOptions {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password?: string | undefined;
  readonly applicationName?: string | undefined;
  /** The `options` startup parameter, e.g. "-c tenant_id=... -c timeline_id=...". */
  readonly options?: string | undefined;
  /** Defaults to "replication", as pg_receivewal sends it. */
  readonly database?: string | undefined;
  /** Defaults to "true" (physical replication). */
  readonly replication?: string | undefined;
  /** Bounds connecting, startup, each query and each START_REPLICATION answer. */
  readonly timeoutMs: number;
  /** TLS towards the server, with libpq's sslmode meanings; absent means sslmode=disable. */
  readonly tls?: ClientTlsOptions | undefined;
}

/** An ErrorResponse from the server. */
export class ServerError extends Error {
  readonly sqlState: string;
  readonly severity: string;
  readonly detail: string | undefined;
  readonly hint: string | undefined;

  constructor(notice: ServerNotice) {
    super(notice.message);
    this.name = 'ServerError';
    this.sqlState = notice.sqlState;
    this.severity = notice.severity;
    this.detail = notice.detail;
    this.hint = notice.hint;
  }
}

export interface QueryResult {
  readonly columns: string[];
  readonly rows: (string | null)[][];
  readonly tag: string;
}

/** How a stream ended. `completed` and `error` leave the connection usable; `closed` does not. */
export type StreamEnd =
  | { readonly how: 'completed'; readonly serverCopyDone: boolean; readonly tags: readonly string[]; readonly columns: string[]; readonly rows: (string | null)[][] }
  | { readonly how: 'error'; readonly serverCopyDone: boolean; readonly error: ServerError }
  | { readonly how: 'closed'; readonly serverCopyDone: boolean; readonly tags: readonly string[]; readonly error: Error | undefined };

/** What the client does with each backend message; one operation runs at a time. */
interface Operation {
  onMessage(code: number, body: Buffer): void;
  onClose(error: Error): void;
}

function unexpected(code: number, where: string): WalcastError {
  return new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `unexpected message '${String.fromCharCode(code)}' ${where}`);
}

/** libpq's sslmode values (libpq-connect.html "sslmode"). */
export type ClientSslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';

export interface ClientTlsOptions {
  readonly mode: ClientSslMode;
  /** PEM CA file; with require it also turns on chain verification, as libpq does when root.crt exists. */
  readonly rootCertFile?: string | undefined;
  readonly certFile?: string | undefined;
  readonly keyFile?: string | undefined;
  /** The name verify-full checks (host=, not hostaddr=). */
  readonly serverName: string;
}

/** SSLRequest: length 8 and the code 1234.5679 (pqcomm.h NEGOTIATE_SSL_CODE). */
const SSL_REQUEST_CODE = 80877103;
const SSL_REQUEST_BYTES = 8;

export async function connectReplication(options: ReplicationClientOptions): Promise<ReplicationClient> {
  assert.ok(options.timeoutMs > 0);
  const plain = connect({ host: options.host, port: options.port });
  plain.setNoDelay(true);
  let socket: Socket;
  try {
    socket = await negotiateTls(plain, options.tls, options.timeoutMs);
  } catch (error) {
    plain.destroy();
    throw error;
  }
  const client = new ReplicationClient(socket, options.timeoutMs);
  try {
    await client.startup(options);
  } catch (error) {
    socket.destroy();
    throw error;
  }
  return client;
}

/**
 * libpq's sslmode (fe-connect.c PQconnectPoll, fe-secure-openssl.c): disable and allow stay plain (walcast does not
 * retry allow with TLS); prefer asks and falls back on 'N'; require, verify-ca and verify-full fail on 'N'.
 * require verifies the chain only when a root certificate is given; verify-ca always; verify-full also checks that
 * the certificate names host=. Bytes after 'S' before the handshake are refused (CVE-2021-23222).
 */
async function negotiateTls(plain: Socket, tls: ClientTlsOptions | undefined, timeoutMs: number): Promise<Socket> {
  if (tls === undefined || tls.mode === 'disable' || tls.mode === 'allow') return plain;
  const request = Buffer.alloc(SSL_REQUEST_BYTES);
  request.writeInt32BE(SSL_REQUEST_BYTES, 0);
  request.writeInt32BE(SSL_REQUEST_CODE, 4);
  plain.write(request);
  const answer = await readAnswerByte(plain, timeoutMs);
  if (answer !== 'S') {
    if (answer !== 'N') throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `received invalid response to SSL negotiation: ${JSON.stringify(answer)}`);
    if (tls.mode === 'prefer') return plain;
    // libpq's words: operators search for this text.
    throw new Error('server does not support SSL, but SSL was required');
  }
  const secure = connectTls({ socket: plain, ...(await tlsConnectionOptions(tls)) });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => secure.destroy(new Error(`the TLS handshake did not finish in ${timeoutMs} ms`)), timeoutMs);
    secure.once('secureConnect', () => {
      clearTimeout(timer);
      resolve();
    });
    secure.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`TLS to the server failed: ${error.message}`, { cause: error }));
    });
  });
  return secure;
}

async function tlsConnectionOptions(tls: ClientTlsOptions): Promise<ConnectionOptions> {
  const verifyChain = tls.mode === 'verify-ca' || tls.mode === 'verify-full' || (tls.mode === 'require' && tls.rootCertFile !== undefined);
  const read = async (file: string | undefined): Promise<Buffer | undefined> => (file === undefined ? undefined : readFile(file));
  const [ca, cert, key] = await Promise.all([read(tls.rootCertFile), read(tls.certFile), read(tls.keyFile)]);
  return {
    ...(ca === undefined ? {} : { ca }),
    ...(cert === undefined || key === undefined ? {} : { cert, key }),
    // SNI carries names only (RFC 6066 §3), never IP addresses.
    ...(isIP(tls.serverName) === 0 ? { servername: tls.serverName } : {}),
    rejectUnauthorized: verifyChain,
    checkServerIdentity: (_host: string, certificate: PeerCertificate) => (tls.mode === 'verify-full' ? checkServerIdentity(tls.serverName, certificate) : undefined),
  };
}

/** The one-byte answer to SSLRequest; more bytes at once mean someone injected plaintext before the handshake. */
function readAnswerByte(socket: Socket, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => finish(new Error(`no answer to SSLRequest in ${timeoutMs} ms`)), timeoutMs);
    // The server says nothing more until the client speaks again, so removing this listener loses no bytes.
    const onData = (chunk: Buffer): void => {
      if (chunk.length !== 1) finish(new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', 'received unencrypted data after SSL response'));
      else finish(undefined, chunk.toString('latin1'));
    };
    const onEnd = (error?: Error): void => finish(error ?? new Error('the server closed the connection during SSL negotiation'));
    function finish(error: Error | undefined, answer?: string): void {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onEnd);
      socket.off('close', onEnd);
      if (error !== undefined) reject(error);
      else resolve(answer!);
    }
    socket.on('data', onData);
    socket.once('error', onEnd);
    socket.once('close', onEnd);
  });
}

export class ReplicationClient {
  /** ParameterStatus values reported by the server. */
  readonly parameters = new Map<string, string>();
  backendPid = 0;
  secretKey = 0;

  private readonly framer = new PacketFramer(() => true, checkBackendLength);
  private operation: Operation | undefined;
  private closedError: Error | undefined;
  private idleError: ServerError | undefined;
  readonly closed: Promise<void>;

  constructor(
    private readonly socket: Socket,
    private readonly timeoutMs: number,
  ) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (error) => this.onClose(error));
    socket.on('close', () => this.onClose(new Error('the server closed the connection')));
  }

  /** Drops the connection at once, without Terminate: a replica that vanished (tests of the server's side). */
  destroy(): void {
    this.socket.destroy();
  }

  /** Runs one simple Query. Rejects with ServerError on ErrorResponse; the connection stays usable. */
  query(sql: string): Promise<QueryResult> {
    return this.run((settle) => new QueryOperation(settle), query(sql), `query ${JSON.stringify(sql.slice(0, 60))}`);
  }

  /**
   * Sends START_REPLICATION and resolves with the stream after CopyBothResponse. An ErrorResponse before or
   * right after CopyBothResponse rejects with ServerError and leaves the connection usable.
   */
  startReplication(command: string): Promise<ReplicationStream> {
    return this.run((settle) => new StartOperation(this, settle), query(command), 'START_REPLICATION');
  }

  /** Sends Terminate and closes. */
  async end(): Promise<void> {
    if (this.closedError === undefined && this.socket.writable) this.socket.end(terminate());
    const timer = setTimeout(() => this.socket.destroy(), END_GRACE_MS);
    await this.closed;
    clearTimeout(timer);
  }

  /** @internal startup, run once by connectReplication. */
  startup(options: ReplicationClientOptions): Promise<void> {
    const parameters: Record<string, string> = {
      user: options.user,
      database: options.database ?? 'replication',
      replication: options.replication ?? 'true',
      application_name: options.applicationName ?? 'walcast',
    };
    if (options.options !== undefined) parameters['options'] = options.options;
    return this.run((settle) => new StartupOperation(this, options, settle), startupMessage(parameters), 'startup');
  }

  /** @internal */
  writeRaw(bytes: Buffer): Promise<void> {
    if (this.closedError !== undefined) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => this.socket.write(bytes, (error) => (error ? reject(error) : resolve())));
  }

  /** @internal hands the connection to another operation (START_REPLICATION to its stream) or frees it. */
  switchOperation(operation: Operation | undefined): void {
    this.operation = operation;
  }

  /** @internal flow control for streams. */
  setPaused(paused: boolean): void {
    if (paused) this.socket.pause();
    else if (this.closedError === undefined) this.socket.resume();
  }

  private run<T>(create: (settle: (error: Error | undefined, value?: T) => void) => Operation, request: Buffer, what: string): Promise<T> {
    if (this.closedError !== undefined) return Promise.reject(this.closedError);
    if (this.operation !== undefined) return Promise.reject(new Error(`cannot run ${what}: another operation is in progress`));
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.socket.destroy(new Error(`${what} timed out after ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      const settle = (error: Error | undefined, value?: T): void => {
        clearTimeout(timer);
        // Free the connection unless the operation handed it on (START_REPLICATION to its stream).
        if (this.operation === operation) this.operation = undefined;
        if (error !== undefined) reject(error);
        else resolve(value as T);
      };
      const operation = create(settle);
      this.operation = operation;
      this.writeRaw(request).catch(() => undefined); // a failed write surfaces as a close
    });
  }

  private onData(chunk: Buffer): void {
    try {
      this.framer.push(chunk, (code, body) => this.dispatch(code, body));
    } catch (error) {
      this.socket.destroy(error instanceof Error ? error : new Error(String(error)));
    }
  }

  private dispatch(code: number, body: Buffer): void {
    if (code === BackendCode.noticeResponse) return;
    if (code === BackendCode.parameterStatus) {
      const [name, value] = decodeParameterStatus(body);
      this.parameters.set(name, value);
      return;
    }
    if (this.operation === undefined && code === BackendCode.errorResponse) {
      // An idle connection gets an ErrorResponse only when the server is about to close it (57P01 on
      // shutdown): keep it as the reason the next operation fails.
      this.idleError ??= new ServerError(decodeNotice(body));
      return;
    }
    if (this.operation === undefined) throw unexpected(code, 'while idle');
    this.operation.onMessage(code, body);
  }

  private onClose(error: Error): void {
    if (this.closedError !== undefined) return;
    this.closedError = this.idleError ?? error;
    const operation = this.operation;
    this.operation = undefined;
    operation?.onClose(this.closedError);
  }
}

/** Startup and authentication (fe-connect.c PQconnectPoll, fe-auth.c pg_fe_sendauth). */
class StartupOperation implements Operation {
  private scram: ScramClientExchange | undefined;
  private error: ServerError | undefined;

  constructor(
    private readonly client: ReplicationClient,
    private readonly options: ReplicationClientOptions,
    private readonly settle: (error: Error | undefined) => void,
  ) {}

  onMessage(code: number, body: Buffer): void {
    switch (code) {
      case BackendCode.authentication:
        this.authenticate(body);
        return;
      case BackendCode.backendKeyData: {
        const key = decodeBackendKeyData(body);
        this.client.backendPid = key.processId;
        this.client.secretKey = key.secretKey;
        return;
      }
      case BackendCode.errorResponse:
        // A FATAL error during startup is followed by the server closing the connection.
        this.error = new ServerError(decodeNotice(body));
        this.client.switchOperation(undefined);
        this.settle(this.error);
        return;
      case BackendCode.readyForQuery:
        this.client.switchOperation(undefined);
        this.settle(undefined);
        return;
      default:
        throw unexpected(code, 'during startup');
    }
  }

  onClose(error: Error): void {
    this.settle(error);
  }

  private authenticate(body: Buffer): void {
    const { code, data } = decodeAuthentication(body);
    switch (code) {
      case AuthCode.ok:
        return;
      case AuthCode.cleartextPassword:
        this.send(passwordMessage(this.password()));
        return;
      case AuthCode.md5Password:
        this.send(passwordMessage(md5Password(this.options.user, this.password(), data)));
        return;
      case AuthCode.sasl: {
        if (!decodeSaslMechanisms(data).includes(SCRAM_MECHANISM)) throw new Error('the server offers no supported SASL mechanism');
        this.scram = new ScramClientExchange(this.password());
        this.send(saslInitialResponse(SCRAM_MECHANISM, this.scram.clientFirst()));
        return;
      }
      case AuthCode.saslContinue:
        this.send(saslResponse(this.requireScram().clientFinal(data.toString('utf8'))));
        return;
      case AuthCode.saslFinal:
        this.requireScram().verifyServerFinal(data.toString('utf8'));
        return;
      default:
        throw new Error(`unsupported authentication request ${code}`);
    }
  }

  private password(): string {
    if (this.options.password === undefined) throw new Error('the server requested a password but none was given');
    return this.options.password;
  }

  private requireScram(): ScramClientExchange {
    if (this.scram === undefined) throw new Error('SASL continuation without SASL start');
    return this.scram;
  }

  private send(bytes: Buffer): void {
    this.client.writeRaw(bytes).catch(() => undefined);
  }
}

/** md5 password: "md5" + md5hex(md5hex(password + user) + salt) (fe-auth.c pg_password_sendauth). */
export function md5Password(user: string, password: string, salt: Buffer): string {
  assert.equal(salt.length, 4, 'the MD5 salt is 4 bytes');
  const inner = createHash('md5').update(password + user, 'utf8').digest('hex');
  return 'md5' + createHash('md5').update(Buffer.concat([Buffer.from(inner, 'latin1'), salt])).digest('hex');
}

/** A simple Query: results until ReadyForQuery. */
class QueryOperation implements Operation {
  private columns: string[] = [];
  private readonly rows: (string | null)[][] = [];
  private tag = '';
  private error: ServerError | undefined;

  constructor(private readonly settle: (error: Error | undefined, value?: QueryResult) => void) {}

  onMessage(code: number, body: Buffer): void {
    switch (code) {
      case BackendCode.rowDescription:
        this.columns = decodeRowDescription(body);
        return;
      case BackendCode.dataRow:
        this.rows.push(decodeDataRow(body));
        return;
      case BackendCode.commandComplete:
        this.tag = decodeCommandComplete(body);
        return;
      case BackendCode.emptyQueryResponse:
        return;
      case BackendCode.errorResponse:
        this.error = new ServerError(decodeNotice(body));
        return;
      case BackendCode.readyForQuery:
        this.finish();
        return;
      default:
        throw unexpected(code, 'in a query result');
    }
  }

  onClose(error: Error): void {
    this.settle(this.error ?? error);
  }

  private finish(): void {
    // Settling hands the connection back, so the caller may start the next query at once.
    this.settle(this.error, this.error === undefined ? { columns: this.columns, rows: this.rows, tag: this.tag } : undefined);
  }
}

/** START_REPLICATION until the stream is handed out or refused. */
class StartOperation implements Operation {
  private phase: 'awaitCopyBoth' | 'grace' | 'failed' = 'awaitCopyBoth';
  private error: ServerError | undefined;
  private stream: ReplicationStream | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly client: ReplicationClient,
    private readonly settle: (error: Error | undefined, value?: ReplicationStream) => void,
  ) {}

  onMessage(code: number, body: Buffer): void {
    if (code === BackendCode.errorResponse && this.phase !== 'failed') {
      clearTimeout(this.timer);
      this.phase = 'failed';
      this.error = new ServerError(decodeNotice(body));
      return;
    }
    if (this.phase === 'failed') {
      if (code !== BackendCode.readyForQuery) return;
      this.client.switchOperation(undefined);
      this.settle(this.error);
      return;
    }
    if (this.phase === 'awaitCopyBoth') {
      if (code !== BackendCode.copyBothResponse) throw unexpected(code, 'before CopyBothResponse');
      this.phase = 'grace';
      this.stream = new ReplicationStream(this.client);
      this.timer = setTimeout(() => this.handOver(), START_ERROR_GRACE_MS);
      return;
    }
    // Anything but an error during the grace period means the stream is running.
    this.handOver();
    this.stream?.onMessage(code, body);
  }

  onClose(error: Error): void {
    clearTimeout(this.timer);
    this.settle(this.error ?? error);
  }

  private handOver(): void {
    clearTimeout(this.timer);
    const stream = this.stream;
    assert.ok(stream !== undefined);
    this.client.switchOperation(stream);
    this.settle(undefined, stream);
  }
}

/**
 * One COPY BOTH stream: CopyData payloads as an async iterator (ends when the server sends CopyDone, an
 * error, or the connection closes), `sendCopyData`/`sendCopyDone` for the client's side, and `ended` for the
 * outcome, which settles at ReadyForQuery (connection usable again) or at close.
 */
export class ReplicationStream implements AsyncIterable<Buffer>, Operation {
  readonly ended: Promise<StreamEnd>;
  private resolveEnded!: (end: StreamEnd) => void;
  private readonly payloads: Buffer[] = [];
  private payloadHead = 0;
  private bufferedBytes = 0;
  private paused = false;
  private inputDone = false;
  /** The pending read's resolve: a payload, or undefined once the input is over. */
  private waiter: ((payload: Buffer | undefined) => void) | undefined;
  private serverCopyDone = false;
  private readonly tags: string[] = [];
  private columns: string[] = [];
  private readonly rows: (string | null)[][] = [];
  private error: ServerError | undefined;

  constructor(private readonly client: ReplicationClient) {
    this.ended = new Promise((resolve) => {
      this.resolveEnded = resolve;
    });
  }

  sendCopyData(payload: Buffer): Promise<void> {
    return this.client.writeRaw(frontendCopyData(payload));
  }

  /** Sends CopyDone and returns the stream's final outcome. */
  async sendCopyDone(): Promise<StreamEnd> {
    // The caller may stop reading payloads now; a paused socket would hide the server's closing messages.
    this.resume();
    await this.client.writeRaw(frontendCopyDone()).catch(() => undefined);
    return this.ended;
  }

  /** The next payload, or undefined once the server's side of the stream is over. */
  read(): Promise<Buffer | undefined> {
    // Resolved straight by the message's arrival (push): live ingest reads every XLogData here, and a `.then` on
    // an iterator result was one more promise and microtask turn between the socket read and the segment write.
    assert.equal(this.waiter, undefined, 'one reader at a time');
    if (this.payloadHead < this.payloads.length) return Promise.resolve(this.take());
    if (this.inputDone) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    return { next: () => this.read().then((payload): IteratorResult<Buffer> => (payload === undefined ? { done: true, value: undefined } : { done: false, value: payload })) };
  }

  /** @internal */
  onMessage(code: number, body: Buffer): void {
    switch (code) {
      case BackendCode.copyData:
        this.push(body);
        return;
      case BackendCode.copyDone:
        this.serverCopyDone = true;
        this.finishInput();
        return;
      case BackendCode.rowDescription:
        this.columns = decodeRowDescription(body);
        return;
      case BackendCode.dataRow:
        this.rows.push(decodeDataRow(body));
        return;
      case BackendCode.commandComplete:
        this.tags.push(decodeCommandComplete(body));
        return;
      case BackendCode.errorResponse:
        this.error = new ServerError(decodeNotice(body));
        this.finishInput();
        return;
      case BackendCode.readyForQuery:
        this.client.switchOperation(undefined);
        this.resume();
        this.finishInput();
        this.resolveEnded(this.outcome());
        return;
      default:
        throw unexpected(code, 'during COPY BOTH');
    }
  }

  /** @internal */
  onClose(error: Error): void {
    this.finishInput();
    this.resolveEnded({ how: 'closed', serverCopyDone: this.serverCopyDone, tags: this.tags, error: this.error ?? error });
  }

  private outcome(): StreamEnd {
    if (this.error !== undefined) return { how: 'error', serverCopyDone: this.serverCopyDone, error: this.error };
    return { how: 'completed', serverCopyDone: this.serverCopyDone, tags: this.tags, columns: this.columns, rows: this.rows };
  }

  private push(payload: Buffer): void {
    if (this.waiter !== undefined) {
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter(payload);
      return;
    }
    this.payloads.push(payload);
    this.bufferedBytes += payload.length;
    if (!this.paused && this.bufferedBytes > STREAM_BUFFER_BYTES_MAX) {
      this.paused = true;
      this.client.setPaused(true);
    }
  }

  private take(): Buffer {
    const payload = this.payloads[this.payloadHead++];
    assert.ok(payload !== undefined);
    this.bufferedBytes -= payload.length;
    // Compact rarely, so taking stays O(1) amortised without Array.shift on a long queue.
    if (this.payloadHead === this.payloads.length) {
      this.payloads.length = 0;
      this.payloadHead = 0;
    }
    if (this.bufferedBytes < STREAM_BUFFER_BYTES_RESUME) this.resume();
    return payload;
  }

  private resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.client.setPaused(false);
  }

  private finishInput(): void {
    if (this.inputDone) return;
    this.inputDone = true;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.(undefined);
  }
}

function checkBackendLength(code: number, lengthField: number): void {
  if (lengthField < LENGTH_BYTES || lengthField > MAX_BACKEND_MESSAGE_BYTES) {
    throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `server message '${String.fromCharCode(code)}' has invalid length ${lengthField}`);
  }
}
