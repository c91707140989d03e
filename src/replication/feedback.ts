/**
 * Codecs for what a replica sends back inside CopyData while it streams: standby status updates ('r'), hot-standby
 * feedback ('h') and Neon pageserver feedback ('z'). Pure functions: a payload in, a typed message or a
 * WalcastError out — malformed input is never a crash (Neon's Rust parser panicked on a wrong length; this one
 * reports it).
 *
 * Layouts: PostgreSQL walreceiver.c XLogWalRcvSendReply / XLogWalRcvSendHSFeedback; Neon libs/pq_proto
 * PageserverFeedback (old wire names ps_writelsn/ps_flushlsn/ps_applylsn/ps_replytime as the Rust pageserver writes
 * them, new names last_received_lsn/disk_consistent_lsn/remote_consistent_lsn/replytime as newer computes accept).
 */
import { WalcastError } from '../errors.js';
import type { Lsn } from '../lsn.js';
import type { Feedback, HotStandbyFeedback, PageserverFeedback, StandbyReply } from '../timeline/replica-feedback.js';

// The decoded shapes belong to the timeline (its replica registry keeps them); re-exported for the codec's users.
export type { Feedback, HotStandbyFeedback, PageserverFeedback, StandbyReply } from '../timeline/replica-feedback.js';

const enum FeedbackTag {
  StandbyReply = 0x72, // 'r'
  HotStandby = 0x68, // 'h'
  Pageserver = 0x7a, // 'z'
}

/** 'r': Int64 write, Int64 flush, Int64 apply, Int64 sendTime, Int8 replyRequested. */
const STANDBY_REPLY_BODY_BYTES = 8 + 8 + 8 + 8 + 1;
/** 'h': Int64 sendTime, UInt32 xmin, UInt32 xmin epoch, UInt32 catalog_xmin, UInt32 catalog_xmin epoch. */
const HOT_STANDBY_BODY_BYTES = 8 + 4 + 4 + 4 + 4;
/** 'z': Neon writes the tag, then a u64 length, then the key/value payload (send_wal.rs skips 9 bytes). */
const PAGESERVER_LENGTH_BYTES = 8;
/** A pageserver feedback payload is a handful of keys; anything larger is not feedback. */
export const PAGESERVER_FEEDBACK_MAX_BYTES = 4096;
/** Key names are short identifiers; bound the NUL search. */
const PAGESERVER_KEY_MAX_BYTES = 64;


function malformed(message: string): WalcastError {
  return new WalcastError('WALCAST_ERR_FEEDBACK_MALFORMED', message);
}

/** Decodes one CopyData payload sent by a replica. */
export function decodeFeedback(payload: Buffer): Feedback | WalcastError {
  if (payload.length === 0) return malformed('empty CopyData from replica');
  const body = payload.subarray(1);
  switch (payload[0]) {
    case FeedbackTag.StandbyReply:
      return decodeStandbyReply(body);
    case FeedbackTag.HotStandby:
      return decodeHotStandby(body);
    case FeedbackTag.Pageserver:
      return decodePageserverEnvelope(body);
    default:
      return malformed(`unexpected message type "${String.fromCharCode(payload[0] ?? 0)}" (0x${(payload[0] ?? 0).toString(16)}) in replica feedback`);
  }
}

export function decodeStandbyReply(body: Buffer): StandbyReply | WalcastError {
  // PostgreSQL reads exactly these fields; a longer message is tolerated (as pq_getmsg* would), a shorter one is not.
  if (body.length < STANDBY_REPLY_BODY_BYTES) return malformed(`standby status update too short: ${body.length} bytes, need ${STANDBY_REPLY_BODY_BYTES}`);
  const replyRequested = body[32];
  if (replyRequested !== 0 && replyRequested !== 1) return malformed(`standby status update replyRequested must be 0 or 1, got ${replyRequested}`);
  return {
    kind: 'standby_reply',
    writeLsn: body.readBigUInt64BE(0),
    flushLsn: body.readBigUInt64BE(8),
    applyLsn: body.readBigUInt64BE(16),
    replyTimeMicros: body.readBigInt64BE(24),
    replyRequested: replyRequested === 1,
  };
}

export function decodeHotStandby(body: Buffer): HotStandbyFeedback | WalcastError {
  if (body.length < HOT_STANDBY_BODY_BYTES) return malformed(`hot standby feedback too short: ${body.length} bytes, need ${HOT_STANDBY_BODY_BYTES}`);
  // Full transaction ids: the epoch is the high half (the seed's version swapped them; Neon fixed it later).
  const xid = BigInt(body.readUInt32BE(8));
  const xidEpoch = BigInt(body.readUInt32BE(12));
  const catalogXid = BigInt(body.readUInt32BE(16));
  const catalogEpoch = BigInt(body.readUInt32BE(20));
  return {
    kind: 'hot_standby',
    timeMicros: body.readBigInt64BE(0),
    xmin: xid === 0n ? 0n : (xidEpoch << 32n) | xid,
    catalogXmin: catalogXid === 0n ? 0n : (catalogEpoch << 32n) | catalogXid,
  };
}

function decodePageserverEnvelope(body: Buffer): PageserverFeedback | WalcastError {
  if (body.length < PAGESERVER_LENGTH_BYTES) return malformed('pageserver feedback too short for its length field');
  // The length Neon writes is not trusted: the payload is the rest of the CopyData, bounded.
  return decodePageserverFeedback(body.subarray(PAGESERVER_LENGTH_BYTES));
}

type PageserverFields = { -readonly [K in keyof Omit<PageserverFeedback, 'kind'>]: PageserverFeedback[K] };

/** Decodes a PageserverFeedback key/value payload: u8 key count, then per key: name\0, Int32 length, value. */
export function decodePageserverFeedback(payload: Buffer): PageserverFeedback | WalcastError {
  if (payload.length > PAGESERVER_FEEDBACK_MAX_BYTES) return malformed(`pageserver feedback larger than ${PAGESERVER_FEEDBACK_MAX_BYTES} bytes`);
  if (payload.length < 1) return malformed('pageserver feedback has no key count');
  const fields: PageserverFields = {
    currentTimelineSize: 0n,
    lastReceivedLsn: 0n,
    diskConsistentLsn: 0n,
    remoteConsistentLsn: 0n,
    replyTimeMicros: 0n,
    shardNumber: 0,
    corruptionDetected: false,
  };
  const keyCount = payload[0] ?? 0;
  let offset = 1;
  for (let index = 0; index < keyCount; index++) {
    const nameEnd = payload.indexOf(0, offset);
    if (nameEnd < 0 || nameEnd - offset > PAGESERVER_KEY_MAX_BYTES) return malformed(`pageserver feedback key ${index} is not NUL-terminated`);
    const name = payload.toString('latin1', offset, nameEnd);
    offset = nameEnd + 1;
    if (offset + 4 > payload.length) return malformed(`pageserver feedback key "${name}" has no length`);
    const valueBytes = payload.readInt32BE(offset);
    offset += 4;
    if (valueBytes < 0 || offset + valueBytes > payload.length) return malformed(`pageserver feedback key "${name}" has length ${valueBytes} past the end`);
    const error = applyPageserverKey(fields, name, payload.subarray(offset, offset + valueBytes));
    if (error !== undefined) return error;
    offset += valueBytes;
  }
  return { kind: 'pageserver', ...fields };
}

/** Sets one known key; unknown keys are skipped, as Neon does, so newer pageservers can add keys. */
function applyPageserverKey(fields: PageserverFields, name: string, value: Buffer): WalcastError | undefined {
  const expectBytes = (bytes: number): WalcastError | undefined =>
    value.length === bytes ? undefined : malformed(`pageserver feedback key "${name}" has length ${value.length}, expected ${bytes}`);
  switch (name) {
    case 'current_timeline_size':
      return expectBytes(8) ?? void (fields.currentTimelineSize = value.readBigUInt64BE(0));
    case 'ps_writelsn':
    case 'last_received_lsn':
      return expectBytes(8) ?? void (fields.lastReceivedLsn = value.readBigUInt64BE(0));
    case 'ps_flushlsn':
    case 'disk_consistent_lsn':
      return expectBytes(8) ?? void (fields.diskConsistentLsn = value.readBigUInt64BE(0));
    case 'ps_applylsn':
    case 'remote_consistent_lsn':
      return expectBytes(8) ?? void (fields.remoteConsistentLsn = value.readBigUInt64BE(0));
    case 'ps_replytime':
    case 'replytime':
      return expectBytes(8) ?? void (fields.replyTimeMicros = value.readBigInt64BE(0));
    case 'shard_number':
      return expectBytes(4) ?? void (fields.shardNumber = value.readUInt32BE(0));
    case 'corruption_detected':
      return expectBytes(1) ?? void (fields.corruptionDetected = value[0] !== 0);
    default:
      return undefined;
  }
}
