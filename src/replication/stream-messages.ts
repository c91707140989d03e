/**
 * The messages a sender puts inside CopyData during streaming, and the chunking rule: pure functions over
 * buffers, no I/O.
 *
 * XLogData ('w') and primary keepalive ('k') are laid out as in PostgreSQL's walsender.c (XLogSendPhysical,
 * WalSndKeepalive) and the protocol documentation ("Streaming Replication Protocol"). Each is wrapped here in
 * its CopyData envelope ('d', Int32 length) so the I/O backend can put the header and the WAL bytes on the wire
 * with no further framing.
 */
import assert from 'node:assert/strict';
import { MAX_SEND_BYTES, XLOG_DATA_HEADER_BYTES } from '../io/backend.js';
import { WAL_PAGE_BYTES, alignDown, lsnDistance, type Lsn } from '../lsn.js';

// The chunk bounds belong to the I/O boundary (backends size their buffers from them); re-exported for the sender.
export { MAX_SEND_BYTES, XLOG_DATA_HEADER_BYTES };

/** CopyData envelope: tag byte 'd' and an Int32 length that counts itself. */
const COPY_DATA_ENVELOPE_BYTES = 1 + 4;
/** XLogData body header: 'w', Int64 dataStart, Int64 walEnd, Int64 sendTime. */
const XLOG_DATA_BODY_HEADER_BYTES = 1 + 8 + 8 + 8;
/** Keepalive body: 'k', Int64 walEnd, Int64 sendTime, Int8 replyRequested. The walreceiver insists on exactly 17 after the tag. */
const KEEPALIVE_BODY_BYTES = 1 + 8 + 8 + 1;
export const KEEPALIVE_MESSAGE_BYTES = COPY_DATA_ENVELOPE_BYTES + KEEPALIVE_BODY_BYTES;

const enum StreamTag {
  CopyData = 0x64, // 'd'
  XLogData = 0x77, // 'w'
  Keepalive = 0x6b, // 'k'
}

/** Microseconds between the Unix epoch and PostgreSQL's epoch, 2000-01-01 UTC. */
export const PG_EPOCH_OFFSET_MICROS = 946_684_800_000_000n;

assert.equal(XLOG_DATA_HEADER_BYTES, COPY_DATA_ENVELOPE_BYTES + XLOG_DATA_BODY_HEADER_BYTES, 'what precedes the WAL bytes of one chunk');
assert.equal(KEEPALIVE_MESSAGE_BYTES, 23);
assert.equal(MAX_SEND_BYTES % WAL_PAGE_BYTES, 0, 'a full chunk ends on a page boundary');

/** Now as a PostgreSQL TimestampTz: microseconds since 2000-01-01 UTC. */
export function pgNowMicros(): bigint {
  return BigInt(Date.now()) * 1000n - PG_EPOCH_OFFSET_MICROS;
}

/** Converts a PostgreSQL TimestampTz to a JS Date (millisecond precision). */
export function pgMicrosToDate(micros: bigint): Date {
  return new Date(Number((micros + PG_EPOCH_OFFSET_MICROS) / 1000n));
}

/**
 * Writes the 30-byte CopyData + XLogData header for a chunk of `walBytes` bytes starting at `dataStart` into
 * `target` (reused per stream, so the hot path allocates nothing).
 */
export function writeXLogDataHeader(target: Buffer, dataStart: Lsn, walEnd: Lsn, sendTimeMicros: bigint, walBytes: number): void {
  assert.ok(target.length >= XLOG_DATA_HEADER_BYTES, 'header buffer too small');
  assert.ok(walBytes > 0 && walBytes <= MAX_SEND_BYTES, 'chunk size out of range');
  target[0] = StreamTag.CopyData;
  target.writeUInt32BE(4 + XLOG_DATA_BODY_HEADER_BYTES + walBytes, 1);
  target[5] = StreamTag.XLogData;
  target.writeBigUInt64BE(dataStart, 6);
  target.writeBigUInt64BE(walEnd, 14);
  target.writeBigInt64BE(sendTimeMicros, 22);
}

/** A complete CopyData-wrapped primary keepalive message. */
export function encodeKeepalive(walEnd: Lsn, sendTimeMicros: bigint, replyRequested: boolean): Buffer {
  const message = Buffer.allocUnsafe(KEEPALIVE_MESSAGE_BYTES);
  message[0] = StreamTag.CopyData;
  message.writeUInt32BE(4 + KEEPALIVE_BODY_BYTES, 1);
  message[5] = StreamTag.Keepalive;
  message.writeBigUInt64BE(walEnd, 6);
  message.writeBigInt64BE(sendTimeMicros, 14);
  message[22] = replyRequested ? 1 : 0;
  return message;
}

/**
 * Where the next chunk that starts at `sentLsn` ends, given that WAL is available up to `endLsn`.
 *
 * walsender.c XLogSendPhysical: send at most MAX_SEND_SIZE; if that does not reach the end of available WAL, round
 * the end down to a page boundary, because "the walreceiver relies on the fact that we never split a WAL record
 * across two messages ... a page boundary is always a safe cut-off point" (Neon e92c9f42c0 fixed standbys that
 * reported corrupt WAL without this). A chunk also never crosses a segment boundary: the I/O backend sends it from
 * one segment file.
 */
export function decideChunkEnd(sentLsn: Lsn, endLsn: Lsn, segmentBytes: number): Lsn {
  assert.ok(endLsn > sentLsn, 'nothing to send');
  const segmentEnd = alignDown(sentLsn, segmentBytes) + BigInt(segmentBytes);
  let chunkEnd = sentLsn + BigInt(MAX_SEND_BYTES);
  if (chunkEnd >= endLsn) {
    chunkEnd = endLsn;
  } else {
    chunkEnd = alignDown(chunkEnd, WAL_PAGE_BYTES);
  }
  if (chunkEnd > segmentEnd) chunkEnd = segmentEnd;
  assert.ok(chunkEnd > sentLsn, 'a chunk makes progress');
  assert.ok(lsnDistance(chunkEnd, sentLsn) <= MAX_SEND_BYTES, 'a chunk fits MAX_SEND_SIZE');
  return chunkEnd;
}
