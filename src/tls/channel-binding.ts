/**
 * The `tls-server-end-point` channel binding (RFC 5929 §4.1) that SCRAM-SHA-256-PLUS binds to: a hash of the
 * server's DER certificate, with the hash function taken from the certificate's signature algorithm (MD5 and
 * SHA-1 are replaced by SHA-256). PostgreSQL computes the same in be-secure-openssl.c be_tls_get_certificate_hash.
 * Pure apart from node:crypto: it reads just enough DER to find the signature algorithm's OID.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';

/** The binding type name a client puts in its GS2 header ("p=tls-server-end-point"). */
export const TLS_SERVER_END_POINT = 'tls-server-end-point';

/** DER tag of a SEQUENCE and of an OBJECT IDENTIFIER (X.690 §8.9, §8.19). */
const DER_SEQUENCE = 0x30;
const DER_OID = 0x06;
/** A long-form DER length has at most this many length bytes for anything a certificate can be. */
const DER_LENGTH_BYTES_MAX = 4;

/** Signature algorithm OIDs (hex of their DER contents) to the hash RFC 5929 asks for. */
const SIGNATURE_HASHES: ReadonlyMap<string, string> = new Map([
  ['2a864886f70d010104', 'sha256'], // md5WithRSAEncryption: MD5 becomes SHA-256
  ['2a864886f70d010105', 'sha256'], // sha1WithRSAEncryption: SHA-1 becomes SHA-256
  ['2a864886f70d01010b', 'sha256'], // sha256WithRSAEncryption
  ['2a864886f70d01010c', 'sha384'], // sha384WithRSAEncryption
  ['2a864886f70d01010d', 'sha512'], // sha512WithRSAEncryption
  ['2a8648ce3d040301', 'sha256'], // ecdsa-with-SHA1: SHA-1 becomes SHA-256
  ['2a8648ce3d040302', 'sha256'], // ecdsa-with-SHA256
  ['2a8648ce3d040303', 'sha384'], // ecdsa-with-SHA384
  ['2a8648ce3d040304', 'sha512'], // ecdsa-with-SHA512
]);

interface DerElement {
  readonly tag: number;
  readonly contentStart: number;
  readonly end: number;
}

function readElement(der: Buffer, offset: number): DerElement {
  assert.ok(offset + 2 <= der.length, 'DER element header inside the certificate');
  const tag = der[offset]!;
  const first = der[offset + 1]!;
  let length = first;
  let contentStart = offset + 2;
  if (first & 0x80) {
    const lengthBytes = first & 0x7f;
    assert.ok(lengthBytes > 0 && lengthBytes <= DER_LENGTH_BYTES_MAX, 'DER length form');
    length = der.readUIntBE(offset + 2, lengthBytes);
    contentStart += lengthBytes;
  }
  const end = contentStart + length;
  assert.ok(end <= der.length, 'DER element inside the certificate');
  return { tag, contentStart, end };
}

/** The hash name RFC 5929 picks for this certificate, or undefined for algorithms it does not define (EdDSA, PSS). */
export function endPointHashName(certificateDer: Buffer): string | undefined {
  const certificate = readElement(certificateDer, 0);
  assert.equal(certificate.tag, DER_SEQUENCE, 'Certificate is a SEQUENCE');
  const tbs = readElement(certificateDer, certificate.contentStart);
  const algorithm = readElement(certificateDer, tbs.end);
  assert.equal(algorithm.tag, DER_SEQUENCE, 'AlgorithmIdentifier is a SEQUENCE');
  const oid = readElement(certificateDer, algorithm.contentStart);
  assert.equal(oid.tag, DER_OID, 'AlgorithmIdentifier starts with an OID');
  return SIGNATURE_HASHES.get(certificateDer.subarray(oid.contentStart, oid.end).toString('hex'));
}

/** The channel binding data for `certificateDer`, or undefined when RFC 5929 defines none for its algorithm. */
export function tlsServerEndPoint(certificateDer: Buffer): Buffer | undefined {
  const hashName = endPointHashName(certificateDer);
  if (hashName === undefined) return undefined;
  return createHash(hashName).update(certificateDer).digest();
}
