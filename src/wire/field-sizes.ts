/**
 * Sizes of the protocol's fixed-width fields ("Message Data Types" in the PostgreSQL protocol documentation), so
 * that codecs name a layout by its fields instead of by raw byte counts and offsets.
 */

/** Byte1 (a message tag) and Int8 (a flag). */
export const BYTE1_BYTES = 1;
/** Int32: a message length, a transaction id, a field length. */
export const INT32_BYTES = 4;
/** Int64: an LSN or a TimestampTz. */
export const INT64_BYTES = 8;
