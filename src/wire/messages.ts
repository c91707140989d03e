/**
 * The closed set of PostgreSQL v3 protocol messages walcast understands, and their tag bytes
 * (PostgreSQL docs, "Message Formats"; src/include/libpq/protocol.h in newer releases).
 *
 * Frontend messages are what a client sends after startup; startup-phase packets have no tag and are typed
 * separately (`StartupPacket`). Backend tags are used by the serializer and by the client's parser.
 */

/** A typed message from a client, after the startup phase. */
export type FrontendMessage =
  | { readonly type: 'query'; readonly sql: string }
  | { readonly type: 'copyData'; readonly payload: Buffer }
  | { readonly type: 'copyDone' }
  | { readonly type: 'copyFail'; readonly message: string }
  | { readonly type: 'terminate' }
  | { readonly type: 'sync' }
  | { readonly type: 'flush' }
  /** 'p': PasswordMessage, SASLInitialResponse and SASLResponse share this tag; the auth state decides. */
  | { readonly type: 'password'; readonly payload: Buffer }
  /** Any other tag (extended query, function call...): the session closes with 08P01. */
  | { readonly type: 'other'; readonly code: number };

export type FrontendMessageType = FrontendMessage['type'];

/** Frontend tag bytes. */
export const enum FrontendCode {
  query = 0x51, // 'Q'
  copyData = 0x64, // 'd'
  copyDone = 0x63, // 'c'
  copyFail = 0x66, // 'f'
  terminate = 0x58, // 'X'
  sync = 0x53, // 'S'
  flush = 0x48, // 'H'
  password = 0x70, // 'p'
}

/** Backend tag bytes. */
export const enum BackendCode {
  authentication = 0x52, // 'R'
  parameterStatus = 0x53, // 'S'
  backendKeyData = 0x4b, // 'K'
  readyForQuery = 0x5a, // 'Z'
  commandComplete = 0x43, // 'C'
  errorResponse = 0x45, // 'E'
  noticeResponse = 0x4e, // 'N'
  rowDescription = 0x54, // 'T'
  dataRow = 0x44, // 'D'
  copyBothResponse = 0x57, // 'W'
  copyInResponse = 0x47, // 'G'
  copyOutResponse = 0x48, // 'H'
  copyData = 0x64, // 'd'
  copyDone = 0x63, // 'c'
  emptyQueryResponse = 0x49, // 'I'
  parameterDescription = 0x74, // 't'
  noData = 0x6e, // 'n'
}

/** Authentication request codes carried in 'R' (PostgreSQL src/include/libpq/pqcomm.h AUTH_REQ_*). */
export const enum AuthCode {
  ok = 0,
  cleartextPassword = 3,
  md5Password = 5,
  sasl = 10,
  saslContinue = 11,
  saslFinal = 12,
}

/** Startup-phase request codes (pqcomm.h): the Int32 after the length of an untyped packet. */
export const enum StartupCode {
  protocol3 = 196608, // 3 << 16 | 0
  cancelRequest = 80877102,
  sslRequest = 80877103,
  gssEncRequest = 80877104,
}

/** An untyped packet of the startup phase. */
export type StartupPacket =
  | { readonly type: 'sslRequest' }
  | { readonly type: 'gssEncRequest' }
  | { readonly type: 'cancelRequest'; readonly processId: number; readonly secretKey: number }
  /** A StartupMessage; `protocolVersion` is (major << 16 | minor), checked by startup.ts, not the parser. */
  | { readonly type: 'startup'; readonly protocolVersion: number; readonly parameters: ReadonlyMap<string, string> };

/** Severity words of ErrorResponse/NoticeResponse (elog.c error_severity). */
export type Severity = 'ERROR' | 'FATAL' | 'PANIC' | 'WARNING' | 'NOTICE' | 'DEBUG' | 'INFO' | 'LOG';

/** The fields walcast sends in ErrorResponse and NoticeResponse. */
export interface ErrorFields {
  readonly severity: Severity;
  readonly sqlState: string;
  readonly message: string;
  readonly detail?: string | undefined;
  readonly hint?: string | undefined;
}

/** Sizes shared by codecs: one tag byte, then an Int32 length that counts itself but not the tag. */
export const TAG_BYTES = 1;
export const LENGTH_BYTES = 4;
export const HEADER_BYTES = TAG_BYTES + LENGTH_BYTES;
