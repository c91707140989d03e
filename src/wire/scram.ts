/**
 * SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it (auth-scram.c, fe-auth-scram.c): the server-side
 * verifier and exchange state machine, and the client side used by client.ts. Pure apart from node:crypto.
 *
 * Without TLS there is no channel binding: the server advertises only "SCRAM-SHA-256" and accepts the gs2
 * headers "n,," and "y,,". Over TLS it also advertises "SCRAM-SHA-256-PLUS" with `tls-server-end-point` binding
 * (auth-scram.c read_client_first_message / verify_client_proof's channel binding check), so libpq's
 * `channel_binding=require` works. The user name inside the SCRAM message is ignored, like PostgreSQL does: the
 * startup packet's user is authoritative and libpq sends "n=" empty.
 */
import assert from 'node:assert/strict';
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { WalcastError } from '../errors.js';
import { BufferReader } from './buffer-reader.js';
import { quoteClientText } from './client-text.js';

/** A malformed SCRAM attribute is quoted only this far: it may be a whole client message. */
const SCRAM_ATTRIBUTE_QUOTE_MAX_CHARS = 20;

export const SCRAM_MECHANISM = 'SCRAM-SHA-256';
export const SCRAM_PLUS_MECHANISM = 'SCRAM-SHA-256-PLUS';
/** The only channel binding type walcast (like PostgreSQL) supports. */
const CHANNEL_BINDING_TYPE = 'tls-server-end-point';

/** What the server knows about channel binding for one exchange. */
export interface ScramChannel {
  /** The client selected SCRAM-SHA-256-PLUS. */
  readonly plusSelected: boolean;
  /** tls-server-end-point data of this connection's certificate; undefined without TLS (no binding offered). */
  readonly endPoint: Buffer | undefined;
}

const NO_CHANNEL: ScramChannel = { plusSelected: false, endPoint: undefined };
/** PostgreSQL's SCRAM_DEFAULT_ITERATIONS (scram-common.h). */
export const SCRAM_ITERATIONS = 4096;
/** PostgreSQL's SCRAM_DEFAULT_SALT_LEN (scram-common.h). */
export const SCRAM_SALT_BYTES = 16;
/** PostgreSQL's SCRAM_RAW_NONCE_LEN: random bytes behind each side's nonce. */
export const SCRAM_NONCE_BYTES = 18;
/** SHA-256 output size: the size of every key, proof and signature. */
const SCRAM_KEY_BYTES = 32;
/**
 * A client refuses server iteration counts above this: a hostile or misconfigured server could otherwise make
 * the client burn minutes of CPU. PostgreSQL's scram_iterations GUC tops out at INT_MAX, but real setups stay
 * far below a million.
 */
export const SCRAM_CLIENT_MAX_ITERATIONS = 10_000_000;
/** Upper bound on a SCRAM message walcast parses; real ones are around 100 bytes. */
const SCRAM_MESSAGE_MAX_BYTES = 1024;

/** What the server stores: never the password (auth-scram.c scram_build_secret). */
export interface ScramVerifier {
  readonly iterations: number;
  readonly salt: Buffer;
  readonly storedKey: Buffer;
  readonly serverKey: Buffer;
}

export function createScramVerifier(password: string, salt: Buffer = randomBytes(SCRAM_SALT_BYTES), iterations = SCRAM_ITERATIONS): ScramVerifier {
  assert.ok(iterations > 0);
  assert.ok(salt.length > 0);
  const salted = saltedPassword(password, salt, iterations);
  const verifier = { iterations, salt, storedKey: sha256(hmac(salted, 'Client Key')), serverKey: hmac(salted, 'Server Key') };
  assert.equal(verifier.storedKey.length, SCRAM_KEY_BYTES);
  return verifier;
}

function saltedPassword(password: string, salt: Buffer, iterations: number): Buffer {
  return pbkdf2Sync(Buffer.from(saslPrep(password), 'utf8'), salt, iterations, SCRAM_KEY_BYTES, 'sha256');
}

/** Non-ASCII spaces that SASLprep maps to U+0020 (RFC 3454 table C.1.2). */
const NON_ASCII_SPACE = /[\u00A0\u1680\u2000-\u200B\u202F\u205F\u3000]/gu;
/** Code points SASLprep maps to nothing (RFC 3454 table B.1). */
const MAPPED_TO_NOTHING = /[\u00AD\u034F\u1806\u180B-\u180D\u200B-\u200D\u2060\uFE00-\uFE0F\uFEFF]/gu;
/** Prohibited output, a practical subset of RFC 3454 C.2-C.9: controls, private use, surrogates, non-characters. */
const PROHIBITED = /[\u0000-\u001F\u007F-\u009F\u06DD\u070F\u180E\u200E\u200F\u202A-\u202E\u2061-\u2063\u206A-\u206F\uE000-\uF8FF\uFFF9-\uFFFF]/u;

/**
 * SASLprep (RFC 4013) the way PostgreSQL applies it (common/saslprep.c pg_saslprep): ASCII passwords are used
 * as they are; otherwise map, NFKC-normalise and, if the result is not a valid SASLprep string, fall back to the
 * raw password, exactly as PostgreSQL does so that such passwords still work.
 */
export function saslPrep(password: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7F]*$/.test(password)) return password;
  const prepared = password.replace(NON_ASCII_SPACE, ' ').replace(MAPPED_TO_NOTHING, '').normalize('NFKC');
  if (prepared === '' || PROHIBITED.test(prepared)) return password;
  return prepared;
}

function hmac(key: Buffer, data: string | Buffer): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

function xor(left: Buffer, right: Buffer): Buffer {
  assert.equal(left.length, right.length);
  const result = Buffer.allocUnsafe(left.length);
  for (let index = 0; index < left.length; index++) result[index] = left[index]! ^ right[index]!;
  return result;
}

function malformed(reason: string): WalcastError {
  return new WalcastError('WALCAST_ERR_PROTOCOL_VIOLATION', `malformed SCRAM message: ${reason}`);
}

/** SASLInitialResponse body ('p'): mechanism name, Int32 length (-1: none), initial data. */
export function parseSaslInitialResponse(payload: Buffer): { readonly mechanism: string; readonly data: string } {
  const reader = new BufferReader(payload, 'SASLInitialResponse');
  const mechanism = reader.cString();
  const length = reader.int32();
  if (length < 0 || length > SCRAM_MESSAGE_MAX_BYTES) throw malformed(`initial response length ${length}`);
  const data = reader.bytes(length).toString('utf8');
  reader.end();
  return { mechanism, data };
}

/** Splits "a=x,b=y" into attributes, keeping order; values may contain '='. */
function attributes(message: string): Array<[string, string]> {
  if (message.length > SCRAM_MESSAGE_MAX_BYTES) throw malformed('too long');
  return message.split(',').map((part) => {
    if (part.length < 2 || part[1] !== '=') throw malformed(`attribute ${quoteClientText(part, SCRAM_ATTRIBUTE_QUOTE_MAX_CHARS)}`);
    return [part[0]!, part.slice(2)];
  });
}

/** The printable nonce alphabet of RFC 5802 §7: %x21-2B / %x2D-7E. */
const NONCE_TEXT = /^[\x21-\x2B\x2D-\x7E]+$/;

/** One server-side exchange. Call `serverFirst`, then `verifyClientFinal`, in that order, once each. */
export class ScramServerExchange {
  private clientFirstBare: string | undefined;
  private serverFirstMessage: string | undefined;
  private gs2Header: string | undefined;
  /** The bytes the client's c= attribute must hold: the GS2 header, plus the binding data when it bound. */
  private expectedBinding: Buffer | undefined;
  private nonce: string | undefined;

  constructor(
    private readonly verifier: ScramVerifier,
    private readonly serverNonce: string = randomBytes(SCRAM_NONCE_BYTES).toString('base64'),
    private readonly channel: ScramChannel = NO_CHANNEL,
  ) {
    assert.ok(NONCE_TEXT.test(serverNonce));
    assert.ok(!channel.plusSelected || channel.endPoint !== undefined, 'PLUS is offered only with binding data');
  }

  /** Takes client-first-message, returns server-first-message. Throws WalcastError on malformed input. */
  serverFirst(clientFirst: string): string {
    assert.equal(this.serverFirstMessage, undefined, 'serverFirst runs once');
    const match = /^(n|y|p=[^,]*),(a=[^,]*)?,(.*)$/s.exec(clientFirst);
    if (match === null) throw malformed('bad GS2 header');
    const bindsWith = this.checkBindingFlag(match[1]!);
    const bare = match[3]!;
    const parsed = attributes(bare);
    if (parsed[0]?.[0] === 'm') throw malformed('mandatory extensions are not supported');
    if (parsed[0]?.[0] !== 'n' || parsed[1]?.[0] !== 'r') throw malformed('expected n= and r= in client-first-message');
    const clientNonce = parsed[1][1];
    if (!NONCE_TEXT.test(clientNonce)) throw malformed('bad client nonce');
    this.gs2Header = clientFirst.slice(0, clientFirst.length - bare.length);
    this.expectedBinding = Buffer.concat([Buffer.from(this.gs2Header, 'utf8'), bindsWith ?? Buffer.alloc(0)]);
    this.clientFirstBare = bare;
    this.nonce = clientNonce + this.serverNonce;
    this.serverFirstMessage = `r=${this.nonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    return this.serverFirstMessage;
  }

  /**
   * The GS2 channel binding flag against what was negotiated (auth-scram.c read_client_first_message): returns the
   * binding data the client bound to, or undefined when it did not bind. Throws on a mismatch or a downgrade.
   */
  private checkBindingFlag(flag: string): Buffer | undefined {
    if (flag.startsWith('p=')) {
      if (!this.channel.plusSelected) {
        throw malformed(this.channel.endPoint === undefined ? 'channel binding is not supported without TLS' : 'channel binding requested but SCRAM-SHA-256-PLUS was not selected');
      }
      if (flag.slice(2) !== CHANNEL_BINDING_TYPE) throw malformed(`unsupported SCRAM channel-binding type "${flag.slice(2)}"`);
      return this.channel.endPoint;
    }
    if (this.channel.plusSelected) throw malformed('SCRAM-SHA-256-PLUS was selected but the client did not use channel binding');
    // "y": the client could bind but thinks the server cannot. Over TLS the server can: someone stripped the PLUS
    // mechanism from the offer (a downgrade), so PostgreSQL refuses, and so does walcast.
    if (flag === 'y' && this.channel.endPoint !== undefined) throw malformed('channel binding negotiation error: the client thinks the server does not support channel binding, but it does');
    return undefined;
  }

  /**
   * Checks client-final-message. Returns server-final-message ("v=...") when the proof is right, undefined when
   * the password is wrong. Throws WalcastError when the message is malformed or does not match this exchange.
   */
  verifyClientFinal(clientFinal: string): string | undefined {
    assert.ok(this.serverFirstMessage !== undefined && this.nonce !== undefined && this.expectedBinding !== undefined, 'serverFirst first');
    const proofAt = clientFinal.lastIndexOf(',p=');
    if (proofAt < 0) throw malformed('no proof in client-final-message');
    const withoutProof = clientFinal.slice(0, proofAt);
    const parsed = attributes(withoutProof);
    if (parsed[0]?.[0] !== 'c' || parsed[1]?.[0] !== 'r') throw malformed('expected c= and r= in client-final-message');
    const binding = Buffer.from(parsed[0][1], 'base64');
    if (binding.length !== this.expectedBinding.length || !timingSafeEqual(binding, this.expectedBinding)) throw malformed('channel binding does not match');
    if (parsed[1][1] !== this.nonce) throw malformed('nonce does not match');
    const proof = Buffer.from(clientFinal.slice(proofAt + 3), 'base64');
    if (proof.length !== SCRAM_KEY_BYTES) throw malformed('proof has the wrong length');
    const authMessage = `${this.clientFirstBare},${this.serverFirstMessage},${withoutProof}`;
    const clientKey = xor(proof, hmac(this.verifier.storedKey, authMessage));
    if (!timingSafeEqual(sha256(clientKey), this.verifier.storedKey)) return undefined;
    return `v=${hmac(this.verifier.serverKey, authMessage).toString('base64')}`;
  }
}

/** Client side of one exchange (fe-auth-scram.c), for client.ts. */
export class ScramClientExchange {
  private readonly clientFirstBare: string;
  private expectedServerSignature: Buffer | undefined;

  constructor(
    private readonly password: string,
    private readonly clientNonce: string = randomBytes(SCRAM_NONCE_BYTES).toString('base64'),
  ) {
    assert.ok(NONCE_TEXT.test(clientNonce));
    this.clientFirstBare = `n=,r=${clientNonce}`;
  }

  /** client-first-message: no channel binding, empty user name (the startup user counts), as libpq sends. */
  clientFirst(): string {
    return `n,,${this.clientFirstBare}`;
  }

  /** Takes server-first-message, returns client-final-message. Throws Error when the server's message is unusable. */
  clientFinal(serverFirst: string): string {
    const parsed = attributes(serverFirst);
    const nonce = parsed[0]?.[0] === 'r' ? parsed[0][1] : undefined;
    const salt = parsed[1]?.[0] === 's' ? Buffer.from(parsed[1][1], 'base64') : undefined;
    const iterations = parsed[2]?.[0] === 'i' ? Number(parsed[2][1]) : Number.NaN;
    if (nonce === undefined || !nonce.startsWith(this.clientNonce) || nonce.length === this.clientNonce.length) throw malformed('bad server nonce');
    if (salt === undefined || salt.length === 0) throw malformed('bad salt');
    if (!Number.isInteger(iterations) || iterations < 1 || iterations > SCRAM_CLIENT_MAX_ITERATIONS) throw malformed(`bad iteration count ${quoteClientText(parsed[2]?.[1] ?? '')}`);
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const salted = saltedPassword(this.password, salt, iterations);
    const clientKey = hmac(salted, 'Client Key');
    const proof = xor(clientKey, hmac(sha256(clientKey), authMessage));
    this.expectedServerSignature = hmac(hmac(salted, 'Server Key'), authMessage);
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  /** Checks server-final-message; throws when the server did not prove it knows the password. */
  verifyServerFinal(serverFinal: string): void {
    assert.ok(this.expectedServerSignature !== undefined, 'clientFinal first');
    const parsed = attributes(serverFinal);
    if (parsed[0]?.[0] === 'e') throw malformed(`server error ${quoteClientText(parsed[0][1])}`);
    const signature = parsed[0]?.[0] === 'v' ? Buffer.from(parsed[0][1], 'base64') : Buffer.alloc(0);
    if (signature.length !== SCRAM_KEY_BYTES || !timingSafeEqual(signature, this.expectedServerSignature)) {
      throw malformed('invalid server signature');
    }
  }
}
