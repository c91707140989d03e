/**
 * Quoting of client-supplied text and bytes for error messages and logs. Whatever a client sends may end up in an
 * ErrorResponse field, and those fields are NUL-terminated C strings whose serializer asserts that no NUL is
 * inside: so client text never goes into a message raw. Control characters (NUL included), DEL, C1 controls,
 * backslashes and double quotes are escaped, and the text is cut to a bounded length, so one hostile value can
 * neither trip an assertion, nor forge log lines, nor grow a message without bound.
 */

/** Characters of client text kept in a message: enough to recognise a value, too few to flood a log. */
export const CLIENT_TEXT_QUOTE_MAX_CHARS = 64;

/** Printable ASCII (space to tilde) is kept as is, except the two characters the quoting itself uses. */
const PRINTABLE_FIRST = 0x20;
const PRINTABLE_LAST = 0x7e;
/** C1 control characters (U+0080..U+009F) are escaped like C0 ones: terminals interpret some of them. */
const C1_FIRST = 0x80;
const C1_LAST = 0x9f;

/** `text` in double quotes, escaped (`\xNN` for controls, `\\`, `\"`) and cut to `maxChars` characters plus "...". */
export function quoteClientText(text: string, maxChars = CLIENT_TEXT_QUOTE_MAX_CHARS): string {
  const characters = Array.from(text);
  const kept = characters.slice(0, maxChars).map(escapeCharacter).join('');
  return `"${kept}${characters.length > maxChars ? '...' : ''}"`;
}

/** One byte a client sent (a message type, a feedback tag) as `0xNN`, with the character when it is printable. */
export function describeClientByte(byte: number): string {
  const hex = `0x${byte.toString(16).padStart(2, '0')}`;
  const printable = byte > PRINTABLE_FIRST && byte <= PRINTABLE_LAST;
  return printable ? `"${escapeCharacter(String.fromCharCode(byte))}" (${hex})` : hex;
}

function escapeCharacter(character: string): string {
  const code = character.codePointAt(0) ?? 0;
  if (character === '\\') return '\\\\';
  if (character === '"') return '\\"';
  if (code >= PRINTABLE_FIRST && code <= PRINTABLE_LAST) return character;
  if (code < PRINTABLE_FIRST || code === PRINTABLE_LAST + 1 || (code >= C1_FIRST && code <= C1_LAST)) return `\\x${code.toString(16).padStart(2, '0')}`;
  return character;
}
