/**
 * A minimal PostgreSQL simple-query client for the live-latency driver and the responsiveness probe: trust auth
 * over TCP on loopback, one query at a time, text results. psql would add a process hop and its own parsing to every commit's timing;
 * this adds a socket write. It is a benchmark tool, not walcast's protocol code (that lives in src/wire).
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';

const PROTOCOL_3_0 = 196608;
/** Type byte + Int32 length. */
const MESSAGE_HEADER_BYTES = 5;
const CONNECT_TIMEOUT_MS = 10_000;

export class SqlClient {
  private buffered: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | undefined;

  private constructor(private readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
      const wake = this.waiter;
      this.waiter = undefined;
      wake?.();
    });
    socket.on('close', () => {
      const wake = this.waiter;
      this.waiter = undefined;
      wake?.();
    });
    socket.on('error', () => undefined);
  }

  /** Connects with these startup parameters (user, database, and replication=true for a walsender). */
  static async connect(port: number, parameters: Record<string, string>): Promise<SqlClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const opened = connect({ host: '127.0.0.1', port }, () => resolve(opened));
      opened.once('error', reject);
      opened.setTimeout(CONNECT_TIMEOUT_MS, () => reject(new Error('connect timeout')));
    });
    socket.setTimeout(0);
    const client = new SqlClient(socket);
    socket.write(startupPacket(parameters));
    await client.readUntilReady();
    return client;
  }

  /** Runs one simple query; returns the first column of each row as text (null for NULL). */
  async query(sql: string): Promise<(string | null)[]> {
    return (await this.queryRows(sql)).map((row) => row[0] ?? null);
  }

  /** Runs one simple query; returns every row's columns as text (null for NULL). */
  async queryRows(sql: string): Promise<(string | null)[][]> {
    const body = Buffer.from(`${sql}\0`);
    const header = Buffer.alloc(MESSAGE_HEADER_BYTES);
    header.write('Q', 0, 'latin1');
    header.writeInt32BE(4 + body.length, 1);
    this.socket.write(Buffer.concat([header, body]));
    return this.readUntilReady();
  }

  end(): void {
    this.socket.end();
  }

  private async readUntilReady(): Promise<(string | null)[][]> {
    const rows: (string | null)[][] = [];
    let error: string | undefined;
    for (;;) {
      const message = await this.nextMessage();
      if (message.type === 'E') error = message.body.toString('latin1').replaceAll('\0', ' ').trim();
      if (message.type === 'R') assert.equal(message.body.readInt32BE(0), 0, 'the benchmark needs trust authentication');
      if (message.type === 'D') rows.push(dataRowColumns(message.body));
      if (message.type === 'Z') break;
    }
    if (error !== undefined) throw new Error(`query failed: ${error}`);
    return rows;
  }

  private async nextMessage(): Promise<{ type: string; body: Buffer }> {
    for (;;) {
      if (this.buffered.length >= MESSAGE_HEADER_BYTES) {
        const length = this.buffered.readInt32BE(1);
        const total = 1 + length;
        if (this.buffered.length >= total) {
          const message = { type: String.fromCharCode(this.buffered[0]!), body: this.buffered.subarray(MESSAGE_HEADER_BYTES, total) };
          this.buffered = this.buffered.subarray(total);
          return message;
        }
      }
      if (this.socket.destroyed) throw new Error('connection closed');
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }
}

/** DataRow: Int16 column count, then per column Int32 length (-1 = NULL) and the bytes. */
function dataRowColumns(body: Buffer): (string | null)[] {
  const columns: (string | null)[] = [];
  let offset = 2;
  for (let index = 0; index < body.readInt16BE(0); index++) {
    const length = body.readInt32BE(offset);
    offset += 4;
    columns.push(length < 0 ? null : body.toString('utf8', offset, offset + length));
    offset += Math.max(0, length);
  }
  return columns;
}

function startupPacket(parameters: Record<string, string>): Buffer {
  const pairs = Object.entries(parameters).map(([key, value]) => `${key}\0${value}\0`).join('');
  const body = Buffer.from(`${pairs}\0`);
  const header = Buffer.alloc(8);
  header.writeInt32BE(8 + body.length, 0);
  header.writeInt32BE(PROTOCOL_3_0, 4);
  return Buffer.concat([header, body]);
}
