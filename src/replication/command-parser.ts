/**
 * Parses the simple-query text a replication connection sends into a typed command. Pure: text in, command out.
 *
 * The grammar follows PostgreSQL's repl_gram.y / repl_scanner.l for the commands walcast serves, plus Neon's
 * additions (TIMELINE_STATUS, `(term='n')` after START_REPLICATION). Like PostgreSQL 15's
 * replication_scanner_is_replication_command, text whose first word is not a replication keyword is SQL, which a
 * physical walsender refuses (0A000) rather than a syntax error.
 */
import { parseLsn, type Lsn } from '../lsn.js';
import { quoteClientText } from '../wire/client-text.js';

export type ReplicationCommand =
  | { readonly kind: 'identify_system' }
  | { readonly kind: 'show'; readonly name: string }
  | { readonly kind: 'timeline_status' }
  | { readonly kind: 'read_replication_slot'; readonly slotName: string }
  | { readonly kind: 'timeline_history'; readonly pgTimelineId: number }
  | {
      readonly kind: 'start_replication';
      readonly slotName: string | undefined;
      readonly startLsn: Lsn;
      readonly pgTimelineId: number | undefined;
      /** Neon's term, for walproposer recovery streams. */
      readonly term: bigint | undefined;
    }
  | { readonly kind: 'set' }
  | { readonly kind: 'empty' }
  | {
      readonly kind: 'create_replication_slot';
      readonly slotName: string;
      readonly temporary: boolean;
      /** LOGICAL slots parse (so they can be refused clearly) but walcast serves physical replication only. */
      readonly slotKind: 'physical' | 'logical';
      readonly reserveWal: boolean;
    }
  | { readonly kind: 'drop_replication_slot'; readonly slotName: string; readonly wait: boolean }
  | { readonly kind: 'unsupported'; readonly command: string }
  | { readonly kind: 'sql' }
  | { readonly kind: 'invalid'; readonly message: string };

export type ReplicationCommandKind = ReplicationCommand['kind'];

/** Replication commands PostgreSQL 15 knows that walcast does not serve. */
const UNSUPPORTED_COMMANDS = new Set(['BASE_BACKUP', 'ALTER_REPLICATION_SLOT', 'UPLOAD_MANIFEST']);
/** A query text longer than this is not a replication command (PostgreSQL has no such limit; the wire layer caps messages). */
const COMMAND_TEXT_MAX_CHARS = 8192;
/** A PostgreSQL TimeLineID is a uint32. */
const PG_TIMELINE_ID_MAX = 0xffff_ffff;

type Token = { readonly kind: 'word'; readonly text: string } | { readonly kind: 'quoted'; readonly text: string } | { readonly kind: 'string'; readonly text: string } | { readonly kind: 'punct'; readonly text: string };

export function parseReplicationCommand(sql: string): ReplicationCommand {
  if (sql.length > COMMAND_TEXT_MAX_CHARS) return { kind: 'invalid', message: `command text longer than ${COMMAND_TEXT_MAX_CHARS} characters` };
  const tokens = tokenize(sql);
  if (tokens === undefined) return { kind: 'invalid', message: 'syntax error: unterminated quoted string or identifier' };
  while (tokens.length > 0 && tokens[tokens.length - 1]?.text === ';') tokens.pop();
  const first = tokens[0];
  if (first === undefined) return { kind: 'empty' };
  if (first.kind !== 'word') return { kind: 'sql' };
  const keyword = first.text.toUpperCase();
  const rest = tokens.slice(1);
  switch (keyword) {
    case 'IDENTIFY_SYSTEM':
      return rest.length === 0 ? { kind: 'identify_system' } : syntaxError(rest[0]);
    case 'TIMELINE_STATUS':
      return rest.length === 0 ? { kind: 'timeline_status' } : syntaxError(rest[0]);
    case 'SHOW':
      return parseShow(rest);
    case 'SET':
      return { kind: 'set' };
    case 'READ_REPLICATION_SLOT':
      return rest.length === 1 && isIdentifier(rest[0]) ? { kind: 'read_replication_slot', slotName: identifierText(rest[0]) } : syntaxError(rest[1] ?? rest[0]);
    case 'TIMELINE_HISTORY':
      return parseTimelineHistory(rest);
    case 'START_REPLICATION':
      return parseStartReplication(rest);
    case 'CREATE_REPLICATION_SLOT':
      return parseCreateReplicationSlot(rest);
    case 'DROP_REPLICATION_SLOT':
      return parseDropReplicationSlot(rest);
    default:
      return UNSUPPORTED_COMMANDS.has(keyword) ? { kind: 'unsupported', command: keyword } : { kind: 'sql' };
  }
}

function parseShow(rest: Token[]): ReplicationCommand {
  // SHOW takes one (possibly dotted) variable name: repl_gram.y var_name.
  const parts: string[] = [];
  for (let index = 0; index < rest.length; index++) {
    const token = rest[index];
    if (token === undefined) break;
    const expectName = index % 2 === 0;
    if (expectName && isIdentifier(token)) parts.push(identifierText(token));
    else if (!expectName && token.text === '.') continue;
    else return syntaxError(token);
  }
  if (parts.length === 0 || rest.length % 2 === 0) return { kind: 'invalid', message: 'syntax error: SHOW needs a parameter name' };
  return { kind: 'show', name: parts.join('.') };
}

function parseTimelineHistory(rest: Token[]): ReplicationCommand {
  const timeline = rest.length === 1 ? parseUint(rest[0]) : undefined;
  if (timeline === undefined) return { kind: 'invalid', message: 'syntax error: TIMELINE_HISTORY needs one timeline number' };
  // walsender.c/repl_gram.y: "invalid timeline %u" for 0.
  if (timeline === 0) return { kind: 'invalid', message: 'invalid timeline 0' };
  return { kind: 'timeline_history', pgTimelineId: timeline };
}

function parseStartReplication(tokens: Token[]): ReplicationCommand {
  let index = 0;
  let slotName: string | undefined;
  if (tokens[index]?.kind === 'word' && tokens[index]?.text.toUpperCase() === 'SLOT') {
    const slot = tokens[index + 1];
    if (slot === undefined || !isIdentifier(slot)) return syntaxError(slot);
    slotName = identifierText(slot);
    index += 2;
  }
  const mode = tokens[index];
  if (mode?.kind === 'word' && mode.text.toUpperCase() === 'LOGICAL') return { kind: 'unsupported', command: 'START_REPLICATION LOGICAL' };
  if (mode?.kind === 'word' && mode.text.toUpperCase() === 'PHYSICAL') index++;
  const position = tokens[index];
  const startLsn = position?.kind === 'word' ? parseLsn(position.text) : undefined;
  if (startLsn === undefined) return { kind: 'invalid', message: `syntax error: START_REPLICATION needs a start position X/X${position === undefined ? '' : `, got ${quoteClientText(position.text)}`}` };
  index++;
  let pgTimelineId: number | undefined;
  if (tokens[index]?.kind === 'word' && tokens[index]?.text.toUpperCase() === 'TIMELINE') {
    pgTimelineId = parseUint(tokens[index + 1]);
    if (pgTimelineId === undefined || pgTimelineId === 0) return { kind: 'invalid', message: 'invalid timeline in START_REPLICATION' };
    index += 2;
  }
  let term: bigint | undefined;
  if (tokens[index]?.text === '(') {
    const parsed = parseTermOption(tokens.slice(index));
    if (typeof parsed === 'string') return { kind: 'invalid', message: parsed };
    term = parsed.term;
    index += parsed.consumed;
  }
  if (index !== tokens.length) return syntaxError(tokens[index]);
  return { kind: 'start_replication', slotName, startLsn, pgTimelineId, term };
}

/** Neon: `(term='n')` after the position. Returns an error message or the term and tokens consumed. */
function parseTermOption(tokens: Token[]): { term: bigint; consumed: number } | string {
  const [open, name, equals, value, close] = tokens;
  if (open?.text !== '(' || name?.kind !== 'word' || name.text.toLowerCase() !== 'term' || equals?.text !== '=' || close?.text !== ')') {
    return 'syntax error: expected (term=\'N\') after the start position';
  }
  if (value === undefined || (value.kind !== 'string' && value.kind !== 'word') || !/^\d{1,20}$/.test(value.text)) return 'invalid term value';
  const term = BigInt(value.text);
  if (term > 0xffff_ffff_ffff_ffffn) return 'term out of range';
  return { term, consumed: 5 };
}

/**
 * repl_gram.y create_replication_slot: `name [TEMPORARY] PHYSICAL` then either legacy keywords or `(option [value],
 * ...)`; walsender.c parseCreateReplSlotOptions then allows a physical slot only reserve_wal, once.
 */
function parseCreateReplicationSlot(tokens: Token[]): ReplicationCommand {
  const name = tokens[0];
  if (!isIdentifier(name)) return syntaxError(name);
  let index = 1;
  const temporary = isKeyword(tokens[index], 'TEMPORARY');
  if (temporary) index++;
  const kindToken = tokens[index];
  const base = { kind: 'create_replication_slot', slotName: identifierText(name), temporary } as const;
  if (isKeyword(kindToken, 'LOGICAL')) {
    // LOGICAL needs an output plugin name (repl_gram.y); what follows it is not checked: walcast refuses it anyway.
    return isIdentifier(tokens[index + 1]) ? { ...base, slotKind: 'logical', reserveWal: false } : syntaxError(tokens[index + 1]);
  }
  if (!isKeyword(kindToken, 'PHYSICAL')) return syntaxError(kindToken);
  const options = tokens[index + 1]?.text === '(' ? parseOptionList(tokens.slice(index + 1)) : parseLegacySlotOptions(tokens.slice(index + 1));
  if (!Array.isArray(options)) return options;
  let reserveWal: boolean | undefined;
  for (const option of options) {
    if (option.name === 'reserve_wal') {
      if (reserveWal !== undefined) return { kind: 'invalid', message: 'conflicting or redundant options' };
      const value = option.value === undefined ? true : parseBoolean(option.value);
      if (value === undefined) return { kind: 'invalid', message: 'reserve_wal requires a Boolean value' };
      reserveWal = value;
    } else if (option.name === 'snapshot' || option.name === 'two_phase') {
      // walsender.c: options of logical slots on a physical one are "conflicting or redundant".
      return { kind: 'invalid', message: 'conflicting or redundant options' };
    } else {
      return { kind: 'invalid', message: `unrecognized option: ${option.name}` };
    }
  }
  return { ...base, slotKind: 'physical', reserveWal: reserveWal ?? false };
}

interface SlotOption {
  readonly name: string;
  readonly value: string | undefined;
}

/** The pre-15 keywords after PHYSICAL/LOGICAL, as the option names repl_gram.y turns them into. */
const LEGACY_SLOT_OPTIONS: Readonly<Record<string, string>> = {
  RESERVE_WAL: 'reserve_wal',
  EXPORT_SNAPSHOT: 'snapshot',
  NOEXPORT_SNAPSHOT: 'snapshot',
  USE_SNAPSHOT: 'snapshot',
  TWO_PHASE: 'two_phase',
};

function parseLegacySlotOptions(tokens: Token[]): SlotOption[] | ReplicationCommand {
  const options: SlotOption[] = [];
  for (const token of tokens) {
    const name = token.kind === 'word' ? LEGACY_SLOT_OPTIONS[token.text.toUpperCase()] : undefined;
    if (name === undefined) return syntaxError(token);
    options.push({ name, value: undefined });
  }
  return options;
}

/** `( name [value] [, ...] )`: at least one option; names fold to lower case; a value is a word or a 'string'. */
function parseOptionList(tokens: Token[]): SlotOption[] | ReplicationCommand {
  const options: SlotOption[] = [];
  let index = 1;
  for (;;) {
    const name = tokens[index];
    if (name?.kind !== 'word' || !/^[A-Za-z_]/.test(name.text)) return syntaxError(name);
    const value = tokens[index + 1];
    const hasValue = value !== undefined && (value.kind === 'word' || value.kind === 'string');
    options.push({ name: name.text.toLowerCase(), value: hasValue ? value.text : undefined });
    index += hasValue ? 2 : 1;
    const separator = tokens[index];
    index++;
    if (separator?.text === ')') break;
    if (separator?.text !== ',') return syntaxError(separator);
  }
  return index === tokens.length ? options : syntaxError(tokens[index]);
}

/** PostgreSQL's parse_bool (bool.c): true/false, yes/no, on/off, 1/0 and unique prefixes, any case. */
export function parseBoolean(text: string): boolean | undefined {
  const value = text.trim().toLowerCase();
  if (value === '') return undefined;
  if ('true'.startsWith(value) || 'yes'.startsWith(value) || value === 'on' || value === '1') return true;
  if ('false'.startsWith(value) || 'no'.startsWith(value) || (value.length >= 2 && 'off'.startsWith(value)) || value === '0') return false;
  return undefined;
}

/** repl_gram.y: `DROP_REPLICATION_SLOT name [WAIT]`. */
function parseDropReplicationSlot(tokens: Token[]): ReplicationCommand {
  const name = tokens[0];
  if (!isIdentifier(name)) return syntaxError(name);
  const wait = isKeyword(tokens[1], 'WAIT');
  const consumed = wait ? 2 : 1;
  if (tokens.length !== consumed) return syntaxError(tokens[consumed]);
  return { kind: 'drop_replication_slot', slotName: identifierText(name), wait };
}

function isKeyword(token: Token | undefined, keyword: string): boolean {
  return token?.kind === 'word' && token.text.toUpperCase() === keyword;
}

function parseUint(token: Token | undefined): number | undefined {
  if (token?.kind !== 'word' || !/^\d{1,10}$/.test(token.text)) return undefined;
  const value = Number(token.text);
  return value <= PG_TIMELINE_ID_MAX ? value : undefined;
}

function isIdentifier(token: Token | undefined): token is Token {
  return token !== undefined && (token.kind === 'quoted' || (token.kind === 'word' && /^[A-Za-z_][A-Za-z0-9_$]*$/.test(token.text)));
}

/** NAMEDATALEN - 1: PostgreSQL truncates longer identifiers to this many bytes (scansup.c truncate_identifier). */
export const IDENTIFIER_BYTES_MAX = 63;

/**
 * Unquoted identifiers are folded to lower case; "quoted" ones are kept; both are truncated to 63 bytes at a
 * character boundary, as repl_scanner.l does (so a 64-character slot name creates its 63-character prefix there too).
 */
function identifierText(token: Token): string {
  const text = token.kind === 'quoted' ? token.text : token.text.toLowerCase();
  if (Buffer.byteLength(text, 'utf8') <= IDENTIFIER_BYTES_MAX) return text;
  let truncated = '';
  for (const char of text) {
    if (Buffer.byteLength(truncated + char, 'utf8') > IDENTIFIER_BYTES_MAX) break;
    truncated += char;
  }
  return truncated;
}

function syntaxError(token: Token | undefined): ReplicationCommand {
  return { kind: 'invalid', message: token === undefined ? 'syntax error at end of input' : `syntax error at or near ${quoteClientText(token.text)}` };
}

/** Characters of an unquoted word: keywords, identifiers, numbers and X/X positions. */
const WORD_CHAR = /[A-Za-z0-9_$/-]/;

/** Splits into words (letters, digits, _, $, /, -), "quoted identifiers", 'strings' and single punctuation. */
function tokenize(text: string): Token[] | undefined {
  const tokens: Token[] = [];
  let index = 0;
  while (index < text.length) {
    const char = text[index] ?? '';
    if (/\s/.test(char)) {
      index++;
    } else if (char === '"' || char === "'") {
      const quoted = readQuoted(text, index, char);
      if (quoted === undefined) return undefined;
      tokens.push({ kind: char === '"' ? 'quoted' : 'string', text: quoted.text });
      index = quoted.next;
    } else if (WORD_CHAR.test(char)) {
      let end = index;
      while (end < text.length && WORD_CHAR.test(text[end] ?? '')) end++;
      tokens.push({ kind: 'word', text: text.slice(index, end) });
      index = end;
    } else {
      tokens.push({ kind: 'punct', text: char });
      index++;
    }
  }
  return tokens;
}

/** Reads a quoted run starting at `start`; a doubled quote stands for itself. */
function readQuoted(text: string, start: number, quote: string): { text: string; next: number } | undefined {
  let value = '';
  let index = start + 1;
  while (index < text.length) {
    const char = text[index];
    if (char === quote) {
      if (text[index + 1] === quote) {
        value += quote;
        index += 2;
        continue;
      }
      return { text: value, next: index + 1 };
    }
    value += char;
    index++;
  }
  return undefined;
}
