/**
 * PgConnection: the one adapter between a client's socket and the pure wire codecs. It parses input into a
 * bounded queue (or hands it to a handler while a COPY BOTH stream runs), writes control messages, and closes
 * the socket in a bounded time. During streaming the I/O backend writes WAL to the socket itself; this class
 * writes only outside streaming and never competes with it.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { TLSSocket, type PeerCertificate, type SecureContext } from 'node:tls';
import { WalcastError, isWalcastError } from '../errors.js';
import { tlsServerEndPoint } from '../tls/channel-binding.js';
import { errorResponse } from './backend-serializer.js';
import { FrontendParser } from './frontend-parser.js';
import type { FrontendMessage, StartupPacket } from './messages.js';

/** Parsed messages held for readMessage before the connection is closed with 08P01: a replica pipelines little. */
export const MAX_QUEUED_MESSAGES = 256;
/** Queue length at which the socket is paused, so the kernel's window pushes back on the client. */
export const PAUSE_QUEUED_MESSAGES = 16;
/** Queued message bytes at which the socket is paused (one maximal message). */
export const PAUSE_QUEUED_BYTES = 1024 * 1024;
/** After close() sends its goodbye, the peer gets this long to read it before the socket is destroyed. */
export const CLOSE_GRACE_MS = 1000;

assert.ok(PAUSE_QUEUED_MESSAGES < MAX_QUEUED_MESSAGES);

/** The peer closed the connection or the socket failed: nothing more will arrive, and nothing can be sent. */
export class DisconnectedError extends Error {
  readonly code = 'disconnected';

  constructor(message = 'the client closed the connection', options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DisconnectedError';
  }
}

export function isDisconnected(error: unknown): error is DisconnectedError {
  return error instanceof DisconnectedError;
}

type Incoming = { readonly kind: 'startup'; readonly packet: StartupPacket } | { readonly kind: 'message'; readonly message: FrontendMessage };

interface Waiter {
  readonly resolve: (item: Incoming) => void;
  readonly reject: (error: unknown) => void;
}

export type MessageHandler = (message: FrontendMessage) => void;

/** What startTls needs: the handshake's context, whether to ask for a client certificate, and a deadline. */
export interface StartTlsOptions {
  readonly secureContext: SecureContext;
  readonly requestClientCertificate: boolean;
  readonly handshakeTimeoutMs: number;
}

/** The byte that accepts an SSLRequest; the client starts its TLS handshake right after it. */
const ACCEPT_ENCRYPTION = Buffer.from('S', 'latin1');

export class PgConnection {
  /** The plain socket, or the TLSSocket wrapping it once startTls has run. */
  socket: Socket;
  readonly remoteAddress: string;
  /** Resolves once the socket has closed, for whatever reason. Never rejects. */
  readonly closed: Promise<void>;
  private resolveClosed: () => void = () => undefined;
  /** Why the client's certificate failed chain verification (set after a handshake that requested one). */
  private clientVerifyError: string | undefined;

  private readonly parser = new FrontendParser();
  private readonly queue: Incoming[] = [];
  private queuedBytes = 0;
  private waiter: Waiter | undefined;
  private handler: MessageHandler | undefined;
  /** Why nothing more will arrive: a parse error or a disconnect. Set once. */
  private inputEnd: unknown;
  private socketClosed = false;
  private closing: Promise<void> | undefined;

  constructor(socket: Socket) {
    this.socket = socket;
    this.remoteAddress = `${socket.remoteAddress ?? 'unknown'}:${socket.remotePort ?? 0}`;
    // Replication control messages are small and latency-sensitive; Nagle would hold them back.
    socket.setNoDelay(true);
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
    this.bind(socket);
  }

  /** True when startTls completed: every byte since is encrypted. */
  get encrypted(): boolean {
    return this.socket instanceof TLSSocket;
  }

  /** tls-server-end-point data of the certificate this connection's handshake used; undefined without TLS. */
  tlsEndPoint(): Buffer | undefined {
    if (!(this.socket instanceof TLSSocket)) return undefined;
    const certificate = this.socket.getCertificate();
    const raw = certificate !== null && 'raw' in certificate ? (certificate as PeerCertificate).raw : undefined;
    return raw === undefined ? undefined : tlsServerEndPoint(raw);
  }

  /**
   * The client's certificate when it sent one over TLS, with whether it chains to the configured CA (and why not);
   * undefined without TLS or without a certificate.
   */
  clientCertificate(): { readonly certificate: PeerCertificate; readonly verified: boolean; readonly why: string | undefined } | undefined {
    if (!(this.socket instanceof TLSSocket)) return undefined;
    const certificate = this.socket.getPeerCertificate();
    if (certificate === null || Object.keys(certificate).length === 0) return undefined;
    const why = this.clientVerifyError;
    return { certificate, verified: why === undefined, why };
  }

  private readonly onSocketClose = (): void => {
    this.socketClosed = true;
    this.endInput(new DisconnectedError());
    this.resolveClosed();
  };
  private readonly onSocketData = (chunk: Buffer): void => this.onData(chunk);
  private readonly onSocketEnd = (): void => this.endInput(new DisconnectedError());
  // 'close' follows every 'error'; the error itself becomes the cause readers see.
  private readonly onSocketError = (cause: Error): void => this.endInput(new DisconnectedError(`connection error: ${cause.message}`, { cause }));

  private bind(socket: Socket): void {
    socket.once('close', this.onSocketClose);
    socket.on('data', this.onSocketData);
    socket.on('end', this.onSocketEnd);
    socket.on('error', this.onSocketError);
  }

  private unbind(socket: Socket): void {
    socket.off('close', this.onSocketClose);
    socket.off('data', this.onSocketData);
    socket.off('end', this.onSocketEnd);
    socket.off('error', this.onSocketError);
  }

  /**
   * Answers an SSLRequest with 'S' and runs the server side of the TLS handshake on this socket; from then on every
   * byte in both directions goes through the TLSSocket (and the I/O backend sees a TLSSocket, so it encrypts too).
   * Refuses plaintext the client sent after its SSLRequest, as PostgreSQL does since CVE-2021-23214. Rejects with
   * DisconnectedError when the handshake fails or times out (the connection is then closed).
   */
  async startTls(options: StartTlsOptions): Promise<void> {
    assert.ok(!this.encrypted, 'TLS starts once');
    assert.ok(options.handshakeTimeoutMs > 0);
    // Anything after the SSLRequest (a queued packet, a partial one, or bytes the parser already refused) was sent in
    // plain text before the handshake: an injection attempt or a broken client.
    if (this.queue.length > 0 || this.parser.bufferedBytes() > 0 || isWalcastError(this.inputEnd)) {
      throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', 'received unencrypted data after SSL request');
    }
    if (this.inputEnd !== undefined) throw this.inputEnd;
    const plain = this.socket;
    const accepted = this.write(ACCEPT_ENCRYPTION);
    // From here the plain socket's bytes are the client's TLS handshake: they must not reach the parser. Bytes that
    // arrive meanwhile stay in the socket's buffer, and TLSSocket takes them over when it wraps it.
    this.unbind(plain);
    plain.pause();
    try {
      await accepted;
    } catch (error) {
      this.bind(plain);
      throw error;
    }
    const secure = new TLSSocket(plain, {
      isServer: true,
      secureContext: options.secureContext,
      requestCert: options.requestClientCertificate,
      // Client certificates are checked by the cert auth method (startup.ts), which says why one is refused.
      rejectUnauthorized: false,
    });
    this.socket = secure;
    this.bind(secure);
    await handshake(secure, options.handshakeTimeoutMs);
    if (options.requestClientCertificate) this.clientVerifyError = chainVerifyError(secure);
  }

  /** True once the socket closed or close() was called. */
  isClosed(): boolean {
    return this.socketClosed || this.closing !== undefined;
  }

  /** Next startup-phase packet (SSLRequest, StartupMessage...). Rejects on timeout, bad input or disconnect. */
  async readStartupPacket(timeoutMs: number): Promise<StartupPacket> {
    const item = await this.next(timeoutMs, 'WALCAST_ERR_STARTUP_TIMEOUT', 'the client did not complete startup in time');
    if (item.kind !== 'startup') throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', 'expected a startup packet, got a typed message');
    return item.packet;
  }

  /** Next typed message. Rejects with WalcastError on timeout or bad input, DisconnectedError on disconnect. */
  async readMessage(timeoutMs: number): Promise<FrontendMessage> {
    const item = await this.next(timeoutMs, 'WALCAST_ERR_IDLE_TIMEOUT', `the client sent nothing for ${timeoutMs} ms`);
    if (item.kind !== 'message') throw new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', 'unexpected startup packet after startup');
    return item.message;
  }

  /**
   * While a handler is set, every message goes to it synchronously as it is parsed (queued ones first);
   * readMessage is not used meanwhile. Unset it to queue messages for readMessage again; calling
   * readMessage also unsets it.
   */
  setMessageHandler(handler: MessageHandler | undefined): void {
    assert.ok(handler === undefined || this.waiter === undefined, 'no readMessage may be pending while a handler is set');
    this.handler = handler;
    while (this.handler !== undefined && this.handler === handler && this.queue.length > 0) {
      const item = this.shift();
      if (item.kind === 'message') handler(item.message);
    }
    this.resumeIfDrained();
  }

  /**
   * Unsets `handler` only if it is still the current one, so that the late cleanup of an old stream cannot take
   * the input away from the stream that followed it on the same connection.
   */
  releaseMessageHandler(handler: MessageHandler): void {
    if (this.handler === handler) this.setMessageHandler(undefined);
  }

  /** Writes control messages; resolves once they reach the kernel, rejects with DisconnectedError if they cannot. */
  write(bytes: Buffer | readonly Buffer[]): Promise<void> {
    const buffers = Buffer.isBuffer(bytes) ? [bytes] : bytes;
    assert.ok(buffers.length > 0);
    if (this.socketClosed || this.socket.destroyed || !this.socket.writable) {
      return Promise.reject(new DisconnectedError('cannot write: the connection is closed'));
    }
    return new Promise<void>((resolve, reject) => {
      const done = (error?: Error | null): void => {
        if (error) reject(new DisconnectedError(`write failed: ${error.message}`, { cause: error }));
        else resolve();
      };
      this.socket.cork();
      buffers.forEach((buffer, index) => this.socket.write(buffer, index === buffers.length - 1 ? done : undefined));
      this.socket.uncork();
    });
  }

  /** Optionally sends a FATAL ErrorResponse, then ends the socket; destroys it after CLOSE_GRACE_MS. Idempotent. */
  close(error?: { readonly sqlState: string; readonly message: string }): Promise<void> {
    if (this.closing !== undefined) return this.closing;
    this.closing = this.closeSocket(error);
    return this.closing;
  }

  private async closeSocket(error: { readonly sqlState: string; readonly message: string } | undefined): Promise<void> {
    this.endInput(new DisconnectedError('the connection is closing'));
    if (!this.socketClosed && !this.socket.destroyed) {
      const timer = setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS);
      timer.unref();
      void this.closed.then(() => clearTimeout(timer));
      if (error !== undefined && this.socket.writable) {
        this.socket.end(errorResponse({ severity: 'FATAL', sqlState: error.sqlState, message: error.message }));
      } else {
        this.socket.end();
      }
    }
    await this.closed;
  }

  private onData(chunk: Buffer): void {
    if (this.inputEnd !== undefined) return;
    try {
      this.parser.push(chunk, {
        onStartup: (packet) => this.accept({ kind: 'startup', packet }, 0),
        onMessage: (message) => this.accept({ kind: 'message', message }, messageBytes(message)),
      });
    } catch (error) {
      if (!isWalcastError(error)) throw error;
      this.onParseError(error);
      return;
    }
    this.pauseIfFull();
  }

  private accept(item: Incoming, bytes: number): void {
    if (this.inputEnd !== undefined) return;
    if (this.handler !== undefined && item.kind === 'message') {
      this.handler(item.message);
      return;
    }
    if (this.queue.length >= MAX_QUEUED_MESSAGES) {
      const overflow = new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `more than ${MAX_QUEUED_MESSAGES} messages sent without waiting for replies`);
      this.endInput(overflow);
      void this.close({ sqlState: overflow.sqlState, message: overflow.message });
      return;
    }
    this.queuedBytes += bytes;
    if (this.waiter !== undefined && this.queue.length === 0) {
      const waiter = this.waiter;
      this.waiter = undefined;
      this.queuedBytes -= bytes;
      waiter.resolve(item);
      return;
    }
    this.queue.push(item);
  }

  private onParseError(error: WalcastError): void {
    if (this.handler !== undefined) {
      // Mid-stream nobody reads errors from readMessage: end the connection here, as PostgreSQL would.
      this.endInput(error);
      void this.close({ sqlState: error.sqlState, message: error.message });
      return;
    }
    // Queued messages stay readable; the reader meets the error after them and decides how to close.
    this.endInput(error);
    this.socket.pause();
  }

  /** Records why input ended (first reason wins) and fails a waiting reader if nothing is queued for it. */
  private endInput(reason: unknown): void {
    if (this.inputEnd === undefined) this.inputEnd = reason;
    if (this.waiter !== undefined && this.queue.length === 0) {
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter.reject(this.inputEnd);
    }
  }

  private next(timeoutMs: number, timeoutCode: 'WALCAST_ERR_STARTUP_TIMEOUT' | 'WALCAST_ERR_IDLE_TIMEOUT', timeoutText: string): Promise<Incoming> {
    assert.ok(timeoutMs > 0);
    assert.equal(this.waiter, undefined, 'one reader at a time');
    // A reader takes the input back from a handler left over from a stream that ended early (an error path may
    // return to the command loop before the stream's cleanup unsets it); messages must not go to a dead stream.
    this.handler = undefined;
    if (this.queue.length > 0) {
      const item = this.shift();
      this.resumeIfDrained();
      return Promise.resolve(item);
    }
    if (this.inputEnd !== undefined) return Promise.reject(this.inputEnd);
    this.resumeIfDrained();
    return new Promise<Incoming>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new WalcastError(timeoutCode, timeoutText));
      }, timeoutMs);
      this.waiter = {
        resolve: (item) => {
          clearTimeout(timer);
          resolve(item);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
    });
  }

  private shift(): Incoming {
    const item = this.queue.shift();
    assert.ok(item !== undefined);
    this.queuedBytes -= item.kind === 'message' ? messageBytes(item.message) : 0;
    assert.ok(this.queuedBytes >= 0);
    return item;
  }

  private pauseIfFull(): void {
    if (this.queue.length >= PAUSE_QUEUED_MESSAGES || this.queuedBytes >= PAUSE_QUEUED_BYTES) this.socket.pause();
  }

  private resumeIfDrained(): void {
    if (this.inputEnd !== undefined || this.socketClosed) return;
    if (this.queue.length < PAUSE_QUEUED_MESSAGES && this.queuedBytes < PAUSE_QUEUED_BYTES && this.socket.isPaused()) this.socket.resume();
  }
}

/**
 * The result of OpenSSL's chain verification of the client certificate against the context's CA. tls.Server reads
 * it in its own 'secure' handler (_tls_wrap.js onServerSocketSecure, via the handle's verifyError()); a TLSSocket
 * made around an existing socket gets no such handler, so this reads it the same way. If the handle lacks the
 * method (a future Node), verification counts as failed: cert auth fails closed.
 */
function chainVerifyError(secure: TLSSocket): string | undefined {
  const handle = (secure as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null } | null })._handle;
  if (typeof handle?.verifyError !== 'function') return 'the TLS handle cannot report verification';
  const error = handle.verifyError();
  if (error === null) return undefined;
  return error.code ?? error.message;
}

/** Resolves once the server side of the handshake is done; destroys the socket and rejects if it fails or stalls. */
function handshake(secure: TLSSocket, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`the TLS handshake did not finish in ${timeoutMs} ms`)), timeoutMs);
    const cleanUp = (): void => {
      clearTimeout(timer);
      secure.off('secure', onSecure);
      secure.off('error', fail);
      secure.off('close', onClose);
    };
    const onSecure = (): void => {
      cleanUp();
      resolve();
    };
    function fail(cause: Error): void {
      cleanUp();
      secure.destroy();
      reject(new DisconnectedError(`TLS handshake failed: ${cause.message}`, { cause }));
    }
    const onClose = (): void => fail(new Error('the client closed the connection during the TLS handshake'));
    secure.once('secure', onSecure);
    secure.once('error', fail);
    secure.once('close', onClose);
  });
}

/** Payload bytes a queued message pins in memory (for the pause threshold). */
function messageBytes(message: FrontendMessage): number {
  switch (message.type) {
    case 'copyData':
    case 'password':
      return message.payload.length;
    case 'query':
      return message.sql.length;
    case 'copyFail':
      return message.message.length;
    default:
      return 0;
  }
}
