/**
 * Validating WAL as it arrives from the upstream, before it is written and published: every page header that
 * starts inside received data is checked (magic, info bits, xlp_pageaddr equal to the page's own LSN, a non-zero
 * timeline, and at a segment start the long header's system id, segment size and page size: PostgreSQL
 * xlogreader.c XLogReaderValidatePageHeader, via storage/wal-page.ts). A header split across two messages is
 * carried over (at most LONG_PAGE_HEADER_BYTES) and checked once complete. An all-zero header is accepted: it is
 * the padding PostgreSQL sends after an XLOG_SWITCH record (this check does not walk records to know).
 *
 * Records and their CRCs are not walked here: a stream's records straddle messages and pages, and crash recovery
 * walks them (storage/wal-validate.ts) before anything unsynced is published again. What passes here gets its
 * page checksums from the writer, and the send path verifies stored pages against them (storage/page-verifier.ts).
 */
import assert from 'node:assert/strict';
import { WalcastError } from '../errors.js';
import { WAL_PAGE_BYTES, type Lsn } from '../lsn.js';
import { LONG_PAGE_HEADER_BYTES, SHORT_PAGE_HEADER_BYTES, checkPage, decodePageHeader } from '../storage/wal-page.js';

export class IncomingPageChecker {
  /** Bytes of a page header received so far, when a message ended inside one. */
  private carry: { pageLsn: Lsn; bytes: Buffer } | undefined;

  constructor(private readonly expect: { readonly segmentBytes: number; readonly systemId: bigint }) {
    assert.equal(expect.segmentBytes % WAL_PAGE_BYTES, 0, 'pages divide a segment');
  }

  /** Throws WALCAST_ERR_WAL_INVALID when a page header in [dataStart, dataStart + data.length) is invalid. */
  check(dataStart: Lsn, data: Buffer): void {
    let consumed = this.continueCarry(dataStart, data);
    const page = BigInt(WAL_PAGE_BYTES);
    let pageLsn = dataStart + BigInt(consumed);
    if (pageLsn % page !== 0n) pageLsn += page - (pageLsn % page);
    for (; pageLsn < dataStart + BigInt(data.length); pageLsn += page) {
      consumed = Number(pageLsn - dataStart);
      if (!this.headerFits(data, consumed)) {
        this.carry = { pageLsn, bytes: Buffer.from(data.subarray(consumed)) };
        return;
      }
      this.validate(data, consumed, pageLsn);
    }
  }

  /** Completes a carried header with the new message's first bytes; returns how many bytes that used. */
  private continueCarry(dataStart: Lsn, data: Buffer): number {
    const carry = this.carry;
    if (carry === undefined) return 0;
    this.carry = undefined;
    if (carry.pageLsn + BigInt(carry.bytes.length) !== dataStart) return 0;
    const joined = Buffer.concat([carry.bytes, data.subarray(0, LONG_PAGE_HEADER_BYTES - carry.bytes.length)]);
    if (!this.headerFits(joined, 0)) {
      this.carry = { pageLsn: carry.pageLsn, bytes: joined };
      return data.length;
    }
    this.validate(joined, 0, carry.pageLsn);
    return Math.min(data.length, LONG_PAGE_HEADER_BYTES - carry.bytes.length);
  }

  /** Whether the header at `offset` is all there: short headers need 24 bytes, long ones 40. */
  private headerFits(bytes: Buffer, offset: number): boolean {
    return decodePageHeader(bytes, offset).ok;
  }

  private validate(bytes: Buffer, offset: number, pageLsn: Lsn): void {
    // After an XLOG_SWITCH record PostgreSQL sends the rest of the segment as zeros (padding, no page headers:
    // xlog.c XLogInsertRecord "fill the rest of the segment"); without walking records, a page starting with
    // an all-zero header is taken as that padding. Recovery and import walk records and stop at real zeros.
    if (isZero(bytes, offset, SHORT_PAGE_HEADER_BYTES)) return;
    const result = checkPage(bytes, offset, { pageLsn, segmentBytes: this.expect.segmentBytes, systemId: this.expect.systemId });
    if (!result.ok) throw new WalcastError('WALCAST_ERR_WAL_INVALID', `the upstream sent invalid WAL: ${result.reason}`);
  }
}

function isZero(bytes: Buffer, offset: number, length: number): boolean {
  for (let index = offset; index < offset + length; index++) if (bytes[index] !== 0) return false;
  return true;
}
