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
import { BufferWriter } from '../wire/buffer-writer.js';
import { BYTE1_BYTES, INT32_BYTES, INT64_BYTES } from '../wire/field-sizes.js';

// The chunk bounds belong to the I/O boundary (backends size their buffers from them); re-exported for the sender.
export { MAX_SEND_BYTES, XLOG_DATA_HEADER_BYTES };

/** The fields of these layouts, by what they hold. */
const TAG_BYTES = BYTE1_BYTES;
const LENGTH_BYTES = INT32_BYTES;
const LSN_BYTES = INT64_BYTES;
const TIMESTAMP_BYTES = INT64_BYTES;
const FLAG_BYTES = BYTE1_BYTES;

/** CopyData envelope: tag byte 'd' and an Int32 length that counts itself. */
const COPY_DATA_ENVELOPE_BYTES = TAG_BYTES + LENGTH_BYTES;
/** XLogData body header: 'w', Int64 dataStart, Int64 walEnd, Int64 sendTime. */
const XLOG_DATA_BODY_HEADER_BYTES = TAG_BYTES + LSN_BYTES + LSN_BYTES + TIMESTAMP_BYTES;
/** Keepalive body: 'k', Int64 walEnd, Int64 sendTime, Int8 replyRequested. The walreceiver insists on exactly 17 after the tag. */
const KEEPALIVE_BODY_BYTES = TAG_BYTES + LSN_BYTES + TIMESTAMP_BYTES + FLAG_BYTES;
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
assert.equal(KEEPALIVE_BODY_BYTES - TAG_BYTES, 17, 'walreceiver.c XLogWalRcvProcessMsg checks this length');
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
 * `target` (reused per stream, so the hot path allocates no buffer).
 */
export function writeXLogDataHeader(target: Buffer, dataStart: Lsn, walEnd: Lsn, sendTimeMicros: bigint, walBytes: number): void {
  assert.ok(walBytes > 0, 'a chunk is not empty');
  assert.ok(walBytes <= MAX_SEND_BYTES, 'a chunk fits MAX_SEND_SIZE');
  const writer = new BufferWriter(target, XLOG_DATA_HEADER_BYTES);
  writer.uint8(StreamTag.CopyData).uint32(LENGTH_BYTES + XLOG_DATA_BODY_HEADER_BYTES + walBytes);
  writer.uint8(StreamTag.XLogData).uint64(dataStart).uint64(walEnd).int64(sendTimeMicros);
  writer.end();
}

/** A complete CopyData-wrapped primary keepalive message. */
export function encodeKeepalive(walEnd: Lsn, sendTimeMicros: bigint, replyRequested: boolean): Buffer {
  const message = Buffer.allocUnsafe(KEEPALIVE_MESSAGE_BYTES);
  const writer = new BufferWriter(message, KEEPALIVE_MESSAGE_BYTES);
  writer.uint8(StreamTag.CopyData).uint32(LENGTH_BYTES + KEEPALIVE_BODY_BYTES);
  writer.uint8(StreamTag.Keepalive).uint64(walEnd).int64(sendTimeMicros).uint8(replyRequested ? 1 : 0);
  writer.end();
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
