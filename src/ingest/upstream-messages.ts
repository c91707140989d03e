/**
 * The replication-client side of the streaming messages: decoding what an upstream walsender sends inside CopyData
 * (XLogData 'w', primary keepalive 'k') and encoding what walcast sends back as a standby (status update 'r',
 * hot-standby feedback 'h'). Pure functions over CopyData payloads (the 'd' envelope is the wire client's job).
 *
 * Layouts: protocol reference §3; PostgreSQL walreceiver.c XLogWalRcvProcessMsg (it requires 'w' to carry at least
 * its 24-byte header and 'k' exactly 17 bytes after the tag), XLogWalRcvSendReply, XLogWalRcvSendHSFeedback.
 */
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';
import { assertLsn, type Lsn } from '../lsn.js';

const enum UpstreamTag {
  XLogData = 0x77, // 'w'
  Keepalive = 0x6b, // 'k'
  StandbyStatus = 0x72, // 'r'
  HotStandbyFeedback = 0x68, // 'h'
}

const TAG_BYTES = 1;
/** 'w' after the tag: Int64 dataStart, Int64 walEnd, Int64 sendTime. */
const XLOG_DATA_HEADER_BYTES = 8 + 8 + 8;
/** 'k' after the tag: Int64 walEnd, Int64 sendTime, Int8 replyRequested (walreceiver insists on exactly this). */
const KEEPALIVE_BODY_BYTES = 8 + 8 + 1;
/** 'r' after the tag: Int64 write, Int64 flush, Int64 apply, Int64 sendTime, Int8 replyRequested. */
const STATUS_BODY_BYTES = 8 + 8 + 8 + 8 + 1;
/** 'h' after the tag: Int64 sendTime, UInt32 xmin, UInt32 epoch, UInt32 catalog_xmin, UInt32 catalog epoch. */
const HOT_STANDBY_BODY_BYTES = 8 + 4 + 4 + 4 + 4;
export const STATUS_MESSAGE_BYTES = TAG_BYTES + STATUS_BODY_BYTES;
export const HOT_STANDBY_MESSAGE_BYTES = TAG_BYTES + HOT_STANDBY_BODY_BYTES;
const XID_MASK = 0xffff_ffffn;

assert.equal(STATUS_MESSAGE_BYTES, 34);
assert.equal(HOT_STANDBY_MESSAGE_BYTES, 25);

export interface XLogDataMessage {
  readonly kind: 'xlog_data';
  readonly dataStart: Lsn;
  /** The sender's current end of WAL (flush position for a primary); may be 0 from some senders. */
  readonly walEnd: Lsn;
  readonly sendTimeMicros: bigint;
  /** A view into the payload: valid until the next message is read. */
  readonly data: Buffer;
}

export interface KeepaliveMessage {
  readonly kind: 'keepalive';
  readonly walEnd: Lsn;
  readonly sendTimeMicros: bigint;
  readonly replyRequested: boolean;
}

export type UpstreamMessage = XLogDataMessage | KeepaliveMessage;

function upstreamProtocolError(message: string): WalcastError {
  return new WalcastError('WALCAST_ERR_UPSTREAM', `upstream protocol violation: ${message}`);
}

/** Decodes one CopyData payload from the upstream; unknown or short messages are errors, as in the walreceiver. */
export function decodeUpstreamMessage(payload: Buffer): UpstreamMessage | WalcastError {
  if (payload.length < TAG_BYTES) return upstreamProtocolError('empty CopyData');
  const body = payload.subarray(TAG_BYTES);
  switch (payload[0]) {
    case UpstreamTag.XLogData:
      if (body.length < XLOG_DATA_HEADER_BYTES) return upstreamProtocolError(`XLogData of ${body.length} bytes is shorter than its header`);
      return {
        kind: 'xlog_data',
        dataStart: body.readBigUInt64BE(0),
        walEnd: body.readBigUInt64BE(8),
        sendTimeMicros: body.readBigInt64BE(16),
        data: body.subarray(XLOG_DATA_HEADER_BYTES),
      };
    case UpstreamTag.Keepalive:
      if (body.length !== KEEPALIVE_BODY_BYTES) return upstreamProtocolError(`keepalive of ${body.length} bytes, expected ${KEEPALIVE_BODY_BYTES}`);
      return { kind: 'keepalive', walEnd: body.readBigUInt64BE(0), sendTimeMicros: body.readBigInt64BE(8), replyRequested: body[16] !== 0 };
    default:
      return upstreamProtocolError(`unexpected message type 0x${(payload[0] ?? 0).toString(16)} in the replication stream`);
  }
}

export interface StandbyStatus {
  /** Received (written, maybe not durable). */
  readonly writeLsn: Lsn;
  /** Durable. */
  readonly flushLsn: Lsn;
  /** What walcast can serve; for a store, the same as flush. */
  readonly applyLsn: Lsn;
  readonly sendTimeMicros: bigint;
  readonly replyRequested: boolean;
}

/** A standby status update 'r' payload. */
export function encodeStandbyStatus(status: StandbyStatus): Buffer {
  assertLsn(status.writeLsn);
  assert.ok(status.flushLsn <= status.writeLsn, 'nothing is durable before it is written');
  const message = Buffer.allocUnsafe(STATUS_MESSAGE_BYTES);
  message[0] = UpstreamTag.StandbyStatus;
  message.writeBigUInt64BE(status.writeLsn, 1);
  message.writeBigUInt64BE(status.flushLsn, 9);
  message.writeBigUInt64BE(status.applyLsn, 17);
  message.writeBigInt64BE(status.sendTimeMicros, 25);
  message[33] = status.replyRequested ? 1 : 0;
  return message;
}

/**
 * A hot-standby feedback 'h' payload from full transaction ids (epoch << 32 | xid; 0 = none), split as
 * walreceiver.c XLogWalRcvSendHSFeedback does with EpochFromFullTransactionId / XidFromFullTransactionId.
 */
export function encodeHotStandbyFeedback(xmin: bigint, catalogXmin: bigint, sendTimeMicros: bigint): Buffer {
  assert.ok(xmin >= 0n && xmin <= 0xffff_ffff_ffff_ffffn, 'xmin is a 64-bit full transaction id');
  assert.ok(catalogXmin >= 0n && catalogXmin <= 0xffff_ffff_ffff_ffffn, 'catalog xmin is a 64-bit full transaction id');
  const message = Buffer.allocUnsafe(HOT_STANDBY_MESSAGE_BYTES);
  message[0] = UpstreamTag.HotStandbyFeedback;
  message.writeBigInt64BE(sendTimeMicros, 1);
  message.writeUInt32BE(Number(xmin & XID_MASK), 9);
  message.writeUInt32BE(Number(xmin >> 32n), 13);
  message.writeUInt32BE(Number(catalogXmin & XID_MASK), 17);
  message.writeUInt32BE(Number(catalogXmin >> 32n), 21);
  return message;
}
