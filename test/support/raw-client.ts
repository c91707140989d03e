/**
 * Hand-built protocol clients for misbehaviour tests: they write bytes directly (built here, independently of
 * walcast's serializers) so that tests can send garbage, oversized or truncated messages, or vanish mid-stream.
 */
import { connect, type Socket } from 'node:net';
import { formatLsn, type Lsn } from '../../src/lsn.js';

const PROTOCOL_3_0 = 196608;

export function startupPacket(parameters: Record<string, string>): Buffer {
  const body = Buffer.concat([
    ...Object.entries(parameters).flatMap(([key, value]) => [Buffer.from(key + '\0'), Buffer.from(value + '\0')]),
    Buffer.from([0]),
  ]);
  const header = Buffer.alloc(8);
  header.writeInt32BE(8 + body.length, 0);
  header.writeInt32BE(PROTOCOL_3_0, 4);
  return Buffer.concat([header, body]);
}

export function typedMessage(type: string, body: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeInt32BE(4 + body.length, 1);
  return Buffer.concat([header, body]);
}

export function queryMessage(sql: string): Buffer {
  return typedMessage('Q', Buffer.from(sql + '\0'));
}

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port }, () => resolve(socket));
    socket.once('error', reject);
  });
}

export interface Collected {
  readonly received: Buffer;
  readonly closed: boolean;
}

/** Sends `bytes`, then collects whatever comes back until the server closes or `waitMs` passes. */
export async function sendRawAndCollect(port: number, bytes: Buffer, waitMs = 3000): Promise<Collected> {
  const socket = await open(port);
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.on('error', () => undefined);
  socket.write(bytes);
  const closed = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), waitMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
  socket.destroy();
  return { received: Buffer.concat(chunks), closed };
}

/** Starts a replication stream as a trust client, waits for the first WAL bytes, then drops the connection. */
export async function startAndVanish(port: number, startLsn: Lsn, waitForBytes = 64 * 1024): Promise<number> {
  const socket = await open(port);
  socket.on('error', () => undefined);
  socket.write(startupPacket({ user: 'repl', database: 'replication', replication: 'true', application_name: 'vanisher' }));
  let received = 0;
  let sentStart = false;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 5000);
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
      // ReadyForQuery ('Z' 0 0 0 5 'I') ends the startup exchange.
      if (!sentStart && chunk.includes(Buffer.from([0x5a, 0, 0, 0, 5, 0x49]))) {
        sentStart = true;
        socket.write(queryMessage(`START_REPLICATION PHYSICAL ${formatLsn(startLsn)}`));
      }
      if (sentStart && received >= waitForBytes) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  socket.destroy();
  return received;
}

/**
 * Opens a replication connection as a trust client, sends START_REPLICATION at `startLsn` once startup is over,
 * and resolves with the socket once the server's CopyBothResponse and at least `bytesAfterCopyBoth` further bytes
 * (WAL) have arrived. Messages are parsed by length, so a marker byte inside WAL never misleads it. Rejects on
 * an ErrorResponse, a close, or `timeoutMs`. The caller owns the socket (and may pause it: a slow replica).
 */
export function startStreaming(port: number, startLsn: Lsn, options: { bytesAfterCopyBoth: number; timeoutMs: number }): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let pending: Buffer = Buffer.alloc(0);
    /** Bytes received after the CopyBothResponse; -1 until it came. */
    let streamed = -1;
    const fail = (why: string): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(new Error(why));
    };
    const timer = setTimeout(() => fail(`no stream within ${options.timeoutMs} ms`), options.timeoutMs);
    const onError = (error: Error): void => fail(`socket error: ${error.message}`);
    const onClose = (): void => fail('closed before streaming');
    socket.on('error', onError);
    socket.once('close', onClose);
    socket.once('connect', () => socket.write(startupPacket({ user: 'repl', database: 'replication', replication: 'true', application_name: 'storm' })));
    const onData = (chunk: Buffer): void => {
      if (streamed >= 0) streamed += chunk.length;
      else {
        const step = readUntilCopyBoth(Buffer.concat([pending, chunk]));
        if (step.error !== undefined) return fail(`ErrorResponse: ${step.error}`);
        if (step.sendStart) socket.write(queryMessage(`START_REPLICATION PHYSICAL ${formatLsn(startLsn)}`));
        pending = step.rest;
        if (step.copyBoth) streamed = step.rest.length;
      }
      if (streamed >= options.bytesAfterCopyBoth) {
        clearTimeout(timer);
        socket.off('data', onData);
        socket.off('close', onClose);
        socket.off('error', onError);
        socket.on('error', () => undefined);
        resolve(socket);
      }
    };
    socket.on('data', onData);
  });
}

/** Walks whole backend messages: ReadyForQuery means "send START_REPLICATION", CopyBothResponse means streaming. */
function readUntilCopyBoth(buffer: Buffer): { rest: Buffer; sendStart: boolean; copyBoth: boolean; error?: string } {
  let offset = 0;
  let sendStart = false;
  while (buffer.length - offset >= 5) {
    const type = String.fromCharCode(buffer[offset] ?? 0);
    const length = buffer.readInt32BE(offset + 1);
    if (buffer.length - offset < 1 + length) break;
    const body = buffer.subarray(offset + 5, offset + 1 + length);
    offset += 1 + length;
    if (type === 'E') return { rest: buffer.subarray(offset), sendStart, copyBoth: false, error: body.toString('latin1') };
    if (type === 'Z') sendStart = true;
    if (type === 'W') return { rest: buffer.subarray(offset), sendStart, copyBoth: true };
  }
  return { rest: buffer.subarray(offset), sendStart, copyBoth: false };
}
