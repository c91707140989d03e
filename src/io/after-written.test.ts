/**
 * StreamWriter.afterWritten on every backend (ts, and each native strategy when the addon is built), over a real
 * loopback socket and a real file: an observer runs only once every byte accepted before it was registered has
 * been handed to the kernel, at once when nothing is outstanding, and never after the stream failed. The publish
 * timing (timeline/publish-timing.ts) depends on "never early".
 */
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { IoBackend, WalChunk } from './backend.js';
import { NATIVE_STRATEGIES, createNativeBackend, probeNative } from './native-backend.js';
import { createTsBackend } from './ts-backend.js';

const CHUNK_BYTES = 128 * 1024;
const HEADER_BYTES = 30;
/** 6 MiB in one go: more than loopback takes before the peer reads, so some of it is still queued. */
const CHUNKS = 48;

const dir = mkdtempSync(join(tmpdir(), 'walcast-after-written-'));
const path = join(dir, 'segment');
const content = Buffer.alloc(CHUNK_BYTES);
for (let index = 0; index < content.length; index++) content[index] = (index * 7 + 3) & 0xff;
writeFileSync(path, content);

async function socketPair(): Promise<{ server: Server; local: Socket; peer: Socket }> {
  const server = createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
  const local = connect({ host: '127.0.0.1', port: address.port });
  await new Promise<void>((resolve) => local.once('connect', resolve));
  return { server, local, peer: await accepted };
}

function header(marker: number): Buffer {
  const bytes = Buffer.alloc(HEADER_BYTES, marker);
  bytes.write('d', 0, 'latin1');
  bytes.writeUInt32BE(4 + 25 + CHUNK_BYTES, 1);
  return bytes;
}

const backends: { name: string; create: () => Promise<IoBackend>; skip: boolean }[] = [
  { name: 'ts', create: async () => createTsBackend(), skip: false },
  ...NATIVE_STRATEGIES.map((strategy) => ({ name: `native/${strategy}`, create: () => createNativeBackend(strategy), skip: !probeNative().ok })),
];

for (const { name, create, skip } of backends) {
  describe(`afterWritten (${name})`, { skip }, () => {
    test('runs only after every byte accepted before it reached the kernel, and at once when none is outstanding', async () => {
      const { server, local, peer } = await socketPair();
      const fd = openSync(path, 'r');
      const backend = await create();
      try {
        const writer = await backend.openStream(local);
        const chunk: WalChunk = { file: { fd, path }, fileOffset: 0, byteCount: CHUNK_BYTES };
        // Not awaited: the sends queue in the backend while the peer reads nothing.
        const sends = Array.from({ length: CHUNKS }, (_, index) => writer.sendChunk(header(index & 0xff), chunk));
        const accepted = CHUNKS * (HEADER_BYTES + CHUNK_BYTES);
        let bytesSentWhenCalled: number | undefined;
        const observed = new Promise<void>((resolve) => {
          assert.equal(
            writer.afterWritten(() => {
              bytesSentWhenCalled = writer.bytesSent;
              resolve();
            }),
            true,
          );
        });
        assert.equal(bytesSentWhenCalled, undefined, 'megabytes the peer has not read cannot all be written yet');
        let received = 0;
        const all = new Promise<void>((resolve) => {
          peer.on('data', (data: Buffer) => {
            received += data.length;
            if (received >= accepted) resolve();
          });
        });
        peer.resume();
        await Promise.all(sends);
        await observed;
        assert.ok(bytesSentWhenCalled !== undefined && bytesSentWhenCalled >= accepted, `called with ${bytesSentWhenCalled} of ${accepted} bytes written`);
        await all;
        assert.equal(received, accepted);
        let immediate = false;
        assert.equal(writer.afterWritten(() => (immediate = true)), true);
        assert.equal(immediate, true, 'nothing outstanding: the observer runs in the call');
        await writer.release();
      } finally {
        closeSync(fd);
        local.destroy();
        peer.destroy();
        server.close();
        await backend.close();
      }
    });

    test('a stream that fails drops its observers instead of calling them', async () => {
      const { server, local, peer } = await socketPair();
      const fd = openSync(path, 'r');
      const backend = await create();
      try {
        const writer = await backend.openStream(local);
        const chunk: WalChunk = { file: { fd, path }, fileOffset: 0, byteCount: CHUNK_BYTES };
        const sends = Array.from({ length: CHUNKS }, (_, index) => writer.sendChunk(header(index & 0xff), chunk));
        let called = false;
        writer.afterWritten(() => (called = true));
        peer.destroy();
        local.destroy();
        await Promise.allSettled(sends);
        await new Promise((resolve) => setTimeout(resolve, 50));
        assert.equal(called, false, 'bytes that never left are never reported written');
        await writer.release().catch(() => undefined);
      } finally {
        closeSync(fd);
        server.close();
        await backend.close();
      }
    });
  });
}
