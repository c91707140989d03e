/**
 * Fault suite, codecs: every parser of client input fed random and mutated bytes (fast-check, shrinking). A parser
 * may accept or refuse, but a refusal is a catalogued WalcastError whose text an ErrorResponse can carry (the no-NUL
 * assertion in the serializer caught the feedback bug), never another exception.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { isWalcastError } from '../src/errors.js';
import { parseReplicationCommand } from '../src/replication/command-parser.js';
import { decodeFeedback } from '../src/replication/feedback.js';
import { selectTimeline } from '../src/replication/timeline-selection.js';
import { errorResponse } from '../src/wire/backend-serializer.js';
import { FrontendParser, parseStartupPacket } from '../src/wire/frontend-parser.js';
import { ScramServerExchange, createScramVerifier, parseSaslInitialResponse } from '../src/wire/scram.js';
import { startupPacket, typedMessage } from './support/raw-client.js';
import { expectCleanOutcome, fuzzParameters } from './support/fuzz.js';

const noop = { onStartup: () => undefined, onMessage: () => undefined };

/** A valid input with bytes flipped, cut, or inserted: the near misses a parser is most likely to get wrong. */
function mutated(valid: fc.Arbitrary<Buffer>): fc.Arbitrary<Buffer> {
  return fc.tuple(valid, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom('flip', 'cut', 'insert')), { maxLength: 4 })).map(([bytes, edits]) => {
    let out = Buffer.from(bytes);
    for (const [at, value, kind] of edits) {
      const index = out.length === 0 ? 0 : at % out.length;
      if (kind === 'flip' && out.length > 0) out[index] = value;
      else if (kind === 'cut') out = out.subarray(0, index);
      else out = Buffer.concat([out.subarray(0, index), Buffer.from([value]), out.subarray(index)]);
    }
    return out;
  });
}

const bytes = (maxLength = 64): fc.Arbitrary<Buffer> => fc.uint8Array({ maxLength }).map((array) => Buffer.from(array));
const wireText = fc.string({ unit: fc.constantFrom('a', 'Z', '0', '_', '=', ' ', '-', '\0', '\n', '"', 'é', "'", '/', ','), maxLength: 24 });
const validStartup = fc.dictionary(wireText.filter((text) => !text.includes('\0')), wireText.filter((text) => !text.includes('\0')), { maxKeys: 4 }).map((parameters) => startupPacket(parameters));
const validMessage = fc.tuple(fc.constantFrom('Q', 'X', 'S', 'H', 'd', 'c', 'f', 'p', 'P', '\0'), bytes(32)).map(([type, body]) => typedMessage(type, body));

test('frontend parser: startup phase then typed messages, split anywhere', () => {
  fc.assert(
    fc.property(fc.array(fc.oneof(mutated(validStartup), mutated(validMessage), bytes()), { maxLength: 4 }), fc.nat(), (parts, split) => {
      const input = Buffer.concat(parts);
      const cut = input.length === 0 ? 0 : split % input.length;
      const parser = new FrontendParser();
      expectCleanOutcome(() => {
        parser.push(input.subarray(0, cut), noop);
        parser.push(input.subarray(cut), noop);
      });
    }),
    fuzzParameters(0.25),
  );
});

test('startup packet parser', () => {
  fc.assert(fc.property(fc.oneof(mutated(validStartup), bytes(128)), (packet) => expectCleanOutcome(() => parseStartupPacket(packet))), fuzzParameters(0.15));
});

test('replication command parser never throws; its syntax errors serialize', () => {
  const words = fc.constantFrom('START_REPLICATION', 'PHYSICAL', 'LOGICAL', 'SLOT', 'TIMELINE', 'IDENTIFY_SYSTEM', 'SHOW', 'TIMELINE_HISTORY', '0/16B3748', 'FFFFFFFF/FFFFFFFF', '1/', '"q\0"', '(', ')', ';', "'x'", '\0', '-1', '99999999999999999999');
  const command = fc.oneof(fc.array(fc.oneof(words, wireText), { maxLength: 8 }).map((parts) => parts.join(' ')), fc.string({ maxLength: 64 }));
  fc.assert(
    fc.property(command, (sql) => {
      const parsed = parseReplicationCommand(sql);
      if (parsed.kind === 'invalid') errorResponse({ severity: 'ERROR', sqlState: '42601', message: parsed.message });
      if (parsed.kind === 'unsupported') errorResponse({ severity: 'ERROR', sqlState: '0A000', message: parsed.command });
    }),
    fuzzParameters(0.2),
  );
});

test("r/h/z feedback decoders return feedback or a serializable WalcastError, never throw", () => {
  const tagged = fc.tuple(fc.constantFrom(0x72, 0x68, 0x7a, 0x00, 0xff), bytes(80)).map(([tag, body]) => Buffer.concat([Buffer.from([tag]), body]));
  fc.assert(
    fc.property(fc.oneof(tagged, bytes(48)), (payload) => {
      const decoded = decodeFeedback(payload);
      if (decoded instanceof Error) {
        assert.ok(isWalcastError(decoded, 'WALCAST_ERR_FEEDBACK_MALFORMED'));
        errorResponse({ severity: 'FATAL', sqlState: decoded.sqlState, message: decoded.message });
      }
    }),
    fuzzParameters(0.2),
  );
});

test('SASL initial response, SCRAM client-first and timeline options', () => {
  const verifier = createScramVerifier('secret');
  fc.assert(
    fc.property(bytes(96), wireText, wireText, (payload, first, id) => {
      expectCleanOutcome(() => parseSaslInitialResponse(payload));
      expectCleanOutcome(() => new ScramServerExchange(verifier).serverFirst(`n,,n=,r=${first}`));
      expectCleanOutcome(() => new ScramServerExchange(verifier).serverFirst(first));
      expectCleanOutcome(() => selectTimeline(new Map([['tenant_id', id], ['timeline_id', first]]), undefined));
    }),
    fuzzParameters(0.15),
  );
});
