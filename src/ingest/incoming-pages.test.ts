/**
 * Page-header validation of received WAL: valid pages pass however the stream is cut (headers split across
 * messages at every byte), and each kind of bad header is refused wherever it falls.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isWalcastError } from '../errors.js';
import { WAL_PAGE_BYTES } from '../lsn.js';
import { IncomingPageChecker } from './incoming-pages.js';

const SEGMENT_BYTES = 1024 * 1024;
const SYSTEM_ID = 7311234567890123456n;
const START_LSN = 3n * BigInt(SEGMENT_BYTES);

/** Three pages of WAL from a segment start, with headers built field by field (xlog_internal.h). */
function pages(): Buffer {
  const bytes = Buffer.alloc(3 * WAL_PAGE_BYTES, 0x5a);
  for (let page = 0; page < 3; page++) {
    const offset = page * WAL_PAGE_BYTES;
    bytes.fill(0, offset, offset + (page === 0 ? 40 : 24));
    bytes.writeUInt16LE(0xd110, offset);
    bytes.writeUInt16LE(page === 0 ? 0x0002 : 0x0001, offset + 2);
    bytes.writeUInt32LE(1, offset + 4);
    bytes.writeBigUInt64LE(START_LSN + BigInt(offset), offset + 8);
    if (page === 0) {
      bytes.writeBigUInt64LE(SYSTEM_ID, offset + 24);
      bytes.writeUInt32LE(SEGMENT_BYTES, offset + 32);
      bytes.writeUInt32LE(WAL_PAGE_BYTES, offset + 36);
    }
  }
  return bytes;
}

function feed(bytes: Buffer, cuts: readonly number[]): void {
  const checker = new IncomingPageChecker({ segmentBytes: SEGMENT_BYTES, systemId: SYSTEM_ID });
  let position = 0;
  for (const cut of [...cuts, bytes.length]) {
    checker.check(START_LSN + BigInt(position), bytes.subarray(position, cut));
    position = cut;
  }
}

test('valid pages pass when a message ends at any byte of a header, and so does switch padding (zeros)', () => {
  const wal = pages();
  for (let split = 0; split <= 41; split++) {
    feed(wal, [split, WAL_PAGE_BYTES + Math.min(split, 24), 2 * WAL_PAGE_BYTES - 1, 2 * WAL_PAGE_BYTES + 3, 2 * WAL_PAGE_BYTES + 5]);
  }
  feed(wal, []);
  const padded = pages();
  padded.fill(0, 2 * WAL_PAGE_BYTES);
  feed(padded, [2 * WAL_PAGE_BYTES + 10]);
});

test('bad magic, pageaddr, timeline, system id and a missing long header are refused, also when split', () => {
  const damages: [string, (bytes: Buffer) => void][] = [
    ['magic', (bytes) => bytes.writeUInt16LE(0xd10f, WAL_PAGE_BYTES)],
    ['pageaddr', (bytes) => bytes.writeBigUInt64LE(START_LSN, 2 * WAL_PAGE_BYTES + 8)],
    ['timeline 0', (bytes) => bytes.writeUInt32LE(0, WAL_PAGE_BYTES + 4)],
    ['system id', (bytes) => bytes.writeBigUInt64LE(SYSTEM_ID + 1n, 24)],
    ['long header', (bytes) => bytes.writeUInt16LE(0, 2)],
  ];
  for (const [what, damage] of damages) {
    for (const cuts of [[], [10], [WAL_PAGE_BYTES + 7], [2 * WAL_PAGE_BYTES + 20]]) {
      const wal = pages();
      damage(wal);
      assert.throws(() => feed(wal, cuts), (error: unknown) => isWalcastError(error, 'WALCAST_ERR_WAL_INVALID'), `${what} cut at ${cuts.join(',')}`);
    }
  }
});
