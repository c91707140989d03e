/**
 * Splits a byte stream into length-prefixed protocol packets, incrementally and without quadratic copying.
 * Shared by the server's frontend parser and the client's backend parser; pure (no sockets).
 *
 * A packet wholly inside one input chunk is handed out as a zero-copy `subarray` of that chunk. Only a packet
 * that straddles chunks is copied, once, into a buffer allocated at its announced size; the length is checked
 * against the caller's bound before that allocation, so at most one maximal packet is ever buffered.
 */
import assert from 'node:assert/strict';
import { LENGTH_BYTES, TAG_BYTES } from './messages.js';

/** Passed as `code` for packets without a tag byte (the startup phase). */
export const UNTYPED_CODE = -1;

/** The largest header: a tag byte and an Int32 length. */
const HEADER_BYTES_MAX = TAG_BYTES + LENGTH_BYTES;

/** Decides, before any body byte is buffered, whether a packet's announced length is acceptable; throws if not. */
export type LengthCheck = (code: number, lengthField: number) => void;
/** Receives one complete packet: its tag (or UNTYPED_CODE) and its body (the bytes after the length field). */
export type PacketHandler = (code: number, body: Buffer) => void;

export class PacketFramer {
  /** Header bytes of a packet that straddles chunks; `headerFilled` of them are valid. */
  private readonly header = Buffer.alloc(HEADER_BYTES_MAX);
  private headerFilled = 0;
  /** Body of a straddling packet, allocated at its full size once the header is known. */
  private body: Buffer | undefined;
  private bodyFilled = 0;
  private bodyCode = 0;

  /**
   * @param typed returns whether the next packet starts with a tag byte; asked at each packet start, so the
   *   handler may switch phases between packets (the startup phase ends with the StartupMessage).
   */
  constructor(
    private readonly typed: () => boolean,
    private readonly checkLength: LengthCheck,
  ) {}

  /** Bytes buffered for an incomplete packet (for back-pressure accounting). */
  bufferedBytes(): number {
    return this.headerFilled + this.bodyFilled;
  }

  /** Feeds one chunk; calls `onPacket` for every packet completed by it, in order. Throws what `checkLength` throws. */
  push(chunk: Buffer, onPacket: PacketHandler): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.body !== undefined) {
        offset = this.fillBody(chunk, offset, onPacket);
      } else if (this.headerFilled > 0) {
        offset = this.fillHeader(chunk, offset, onPacket);
      } else {
        offset = this.takeWhole(chunk, offset, onPacket);
      }
    }
    assert.equal(offset, chunk.length);
  }

  private headerBytes(): number {
    return this.typed() ? TAG_BYTES + LENGTH_BYTES : LENGTH_BYTES;
  }

  /** Fast path: packets that lie wholly in `chunk` go out as subarrays; a straddling tail starts buffering. */
  private takeWhole(chunk: Buffer, start: number, onPacket: PacketHandler): number {
    let offset = start;
    while (offset < chunk.length) {
      const headerBytes = this.headerBytes();
      if (chunk.length - offset < headerBytes) return this.fillHeader(chunk, offset, onPacket);
      const code = headerBytes === LENGTH_BYTES ? UNTYPED_CODE : chunk[offset]!;
      const lengthField = chunk.readInt32BE(offset + headerBytes - LENGTH_BYTES);
      this.checkLength(code, lengthField);
      const bodyBytes = lengthField - LENGTH_BYTES;
      const bodyStart = offset + headerBytes;
      if (chunk.length - bodyStart < bodyBytes) {
        this.startBody(code, bodyBytes);
        return this.fillBody(chunk, bodyStart, onPacket);
      }
      offset = bodyStart + bodyBytes;
      onPacket(code, chunk.subarray(bodyStart, offset));
    }
    return offset;
  }

  /** Collects a header that straddles chunks, then starts its body. */
  private fillHeader(chunk: Buffer, start: number, onPacket: PacketHandler): number {
    const headerBytes = this.headerBytes();
    assert.ok(this.headerFilled < headerBytes);
    const take = Math.min(headerBytes - this.headerFilled, chunk.length - start);
    chunk.copy(this.header, this.headerFilled, start, start + take);
    this.headerFilled += take;
    if (this.headerFilled < headerBytes) return start + take;
    const code = headerBytes === LENGTH_BYTES ? UNTYPED_CODE : this.header[0]!;
    const lengthField = this.header.readInt32BE(headerBytes - LENGTH_BYTES);
    this.headerFilled = 0;
    this.checkLength(code, lengthField);
    this.startBody(code, lengthField - LENGTH_BYTES);
    return this.fillBody(chunk, start + take, onPacket);
  }

  private startBody(code: number, bodyBytes: number): void {
    assert.ok(bodyBytes >= 0, 'checkLength must reject lengths below the length field itself');
    assert.equal(this.body, undefined);
    this.body = Buffer.allocUnsafe(bodyBytes);
    this.bodyFilled = 0;
    this.bodyCode = code;
  }

  private fillBody(chunk: Buffer, start: number, onPacket: PacketHandler): number {
    const body = this.body;
    assert.ok(body !== undefined);
    const take = Math.min(body.length - this.bodyFilled, chunk.length - start);
    chunk.copy(body, this.bodyFilled, start, start + take);
    this.bodyFilled += take;
    if (this.bodyFilled < body.length) return start + take;
    this.body = undefined;
    this.bodyFilled = 0;
    onPacket(this.bodyCode, body);
    return start + take;
  }
}
