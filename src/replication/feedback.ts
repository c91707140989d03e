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
import { WalcastError, isWalcastError } from '../errors.js';
import type { Lsn } from '../lsn.js';
import { BufferReader } from '../wire/buffer-reader.js';
import { describeClientByte, quoteClientText } from '../wire/client-text.js';
import { BYTE1_BYTES, INT32_BYTES, INT64_BYTES } from '../wire/field-sizes.js';
import type { Feedback, HotStandbyFeedback, PageserverFeedback, StandbyReply } from '../timeline/replica-feedback.js';

// The decoded shapes belong to the timeline (its replica registry keeps them); re-exported for the codec's users.
export type { Feedback, HotStandbyFeedback, PageserverFeedback, StandbyReply } from '../timeline/replica-feedback.js';

const enum FeedbackTag {
  StandbyReply = 0x72, // 'r'
  HotStandby = 0x68, // 'h'
  Pageserver = 0x7a, // 'z'
}

/** The fields of these layouts, by what they hold. */
const LSN_BYTES = INT64_BYTES;
const TIMESTAMP_BYTES = INT64_BYTES;
const XID_BYTES = INT32_BYTES;
const EPOCH_BYTES = INT32_BYTES;
const FLAG_BYTES = BYTE1_BYTES;

/** 'r': Int64 write, Int64 flush, Int64 apply, Int64 sendTime, Int8 replyRequested. */
const STANDBY_REPLY_BODY_BYTES = LSN_BYTES + LSN_BYTES + LSN_BYTES + TIMESTAMP_BYTES + FLAG_BYTES;
/** 'h': Int64 sendTime, UInt32 xmin, UInt32 xmin epoch, UInt32 catalog_xmin, UInt32 catalog_xmin epoch. */
const HOT_STANDBY_BODY_BYTES = TIMESTAMP_BYTES + XID_BYTES + EPOCH_BYTES + XID_BYTES + EPOCH_BYTES;
/** 'z': Neon writes the tag, then a u64 length, then the key/value payload (send_wal.rs skips 9 bytes). */
const PAGESERVER_LENGTH_BYTES = INT64_BYTES;
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
  const reader = feedbackReader(payload, 'replica feedback');
  const tag = reader.int8();
  const body = reader.rest();
  switch (tag) {
    case FeedbackTag.StandbyReply:
      return decodeStandbyReply(body);
    case FeedbackTag.HotStandby:
      return decodeHotStandby(body);
    case FeedbackTag.Pageserver:
      return decodePageserverEnvelope(body);
    default:
      return malformed(`unexpected message type ${describeClientByte(tag)} in replica feedback`);
  }
}

export function decodeStandbyReply(body: Buffer): StandbyReply | WalcastError {
  // PostgreSQL reads exactly these fields; a longer message is tolerated (as pq_getmsg* would), a shorter one is not.
  if (body.length < STANDBY_REPLY_BODY_BYTES) return malformed(`standby status update too short: ${body.length} bytes, need ${STANDBY_REPLY_BODY_BYTES}`);
  const reader = feedbackReader(body, 'standby status update');
  const writeLsn = reader.uint64();
  const flushLsn = reader.uint64();
  const applyLsn = reader.uint64();
  const replyTimeMicros = reader.int64();
  const replyRequested = reader.int8();
  if (replyRequested !== 0 && replyRequested !== 1) return malformed(`standby status update replyRequested must be 0 or 1, got ${replyRequested}`);
  return { kind: 'standby_reply', writeLsn, flushLsn, applyLsn, replyTimeMicros, replyRequested: replyRequested === 1 };
}

export function decodeHotStandby(body: Buffer): HotStandbyFeedback | WalcastError {
  if (body.length < HOT_STANDBY_BODY_BYTES) return malformed(`hot standby feedback too short: ${body.length} bytes, need ${HOT_STANDBY_BODY_BYTES}`);
  const reader = feedbackReader(body, 'hot standby feedback');
  const timeMicros = reader.int64();
  // Full transaction ids: the epoch is the high half (the seed's version swapped them; Neon fixed it later).
  const xmin = fullTransactionId(reader.uint32(), reader.uint32());
  const catalogXmin = fullTransactionId(reader.uint32(), reader.uint32());
  return { kind: 'hot_standby', timeMicros, xmin, catalogXmin };
}

/** epoch << 32 | xid, with xid 0 (InvalidTransactionId) meaning none whatever the epoch. */
function fullTransactionId(xid: number, epoch: number): bigint {
  return xid === 0 ? 0n : (BigInt(epoch) << 32n) | BigInt(xid);
}

/** A cursor whose short reads become WALCAST_ERR_FEEDBACK_MALFORMED. */
function feedbackReader(body: Buffer, what: string): BufferReader {
  return new BufferReader(body, what, 'WALCAST_ERR_FEEDBACK_MALFORMED');
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
  try {
    return { kind: 'pageserver', ...readPageserverFields(feedbackReader(payload, 'pageserver feedback')) };
  } catch (error) {
    // The reader throws for short or malformed input; this codec reports it instead.
    if (isWalcastError(error)) return error;
    throw error;
  }
}

function readPageserverFields(reader: BufferReader): PageserverFields {
  const fields: PageserverFields = {
    currentTimelineSize: 0n,
    lastReceivedLsn: 0n,
    diskConsistentLsn: 0n,
    remoteConsistentLsn: 0n,
    replyTimeMicros: 0n,
    shardNumber: 0,
    corruptionDetected: false,
  };
  const keyCount = reader.int8();
  for (let index = 0; index < keyCount; index++) {
    const name = reader.cString({ maxBytes: PAGESERVER_KEY_MAX_BYTES, encoding: 'latin1' });
    const valueBytes = reader.int32();
    if (valueBytes < 0) throw malformed(`pageserver feedback key ${quoteClientText(name)} has negative length ${valueBytes}`);
    const error = applyPageserverKey(fields, name, reader.bytes(valueBytes));
    if (error !== undefined) throw error;
  }
  return fields;
}

/** Sets one known key; unknown keys are skipped, as Neon does, so newer pageservers can add keys. */
function applyPageserverKey(fields: PageserverFields, name: string, value: Buffer): WalcastError | undefined {
  const expectBytes = (bytes: number): WalcastError | undefined =>
    value.length === bytes ? undefined : malformed(`pageserver feedback key ${quoteClientText(name)} has length ${value.length}, expected ${bytes}`);
  switch (name) {
    case 'current_timeline_size':
      return expectBytes(INT64_BYTES) ?? void (fields.currentTimelineSize = value.readBigUInt64BE(0));
    case 'ps_writelsn':
    case 'last_received_lsn':
      return expectBytes(LSN_BYTES) ?? void (fields.lastReceivedLsn = value.readBigUInt64BE(0));
    case 'ps_flushlsn':
    case 'disk_consistent_lsn':
      return expectBytes(LSN_BYTES) ?? void (fields.diskConsistentLsn = value.readBigUInt64BE(0));
    case 'ps_applylsn':
    case 'remote_consistent_lsn':
      return expectBytes(LSN_BYTES) ?? void (fields.remoteConsistentLsn = value.readBigUInt64BE(0));
    case 'ps_replytime':
    case 'replytime':
      return expectBytes(TIMESTAMP_BYTES) ?? void (fields.replyTimeMicros = value.readBigInt64BE(0));
    case 'shard_number':
      return expectBytes(INT32_BYTES) ?? void (fields.shardNumber = value.readUInt32BE(0));
    case 'corruption_detected':
      return expectBytes(FLAG_BYTES) ?? void (fields.corruptionDetected = value[0] !== 0);
    default:
      return undefined;
  }
}
