/**
 * Builds a simple-query result in text format, in the shape PostgreSQL's walsender uses for replication
 * command results (printsimple.c printsimple_startup / printsimple; walsender.c IdentifySystem): table OID 0,
 * column number 0, typmod -1, format 0, then one DataRow per row and a CommandComplete.
 */
import assert from 'node:assert/strict';
import { commandComplete, dataRow, rowDescription, type FieldDescription } from './backend-serializer.js';

export type ColumnType = 'text' | 'int4' | 'int8';

export interface ColumnSpec {
  readonly name: string;
  readonly type: ColumnType;
}

/** Type OID and typlen per column type (pg_type.dat: text 25 varlena, int4 23 4 bytes, int8 20 8 bytes). */
const COLUMN_TYPES: Readonly<Record<ColumnType, { readonly oid: number; readonly size: number }>> = {
  text: { oid: 25, size: -1 },
  int4: { oid: 23, size: 4 },
  int8: { oid: 20, size: 8 },
};
const NO_TYPE_MODIFIER = -1;
const NO_TABLE_OID = 0;
const NO_COLUMN_NUMBER = 0;

/**
 * RowDescription, DataRows, then CommandComplete with `tag`; without a tag no CommandComplete follows (walsender.c
 * StartReplication sends the next-timeline row that way, and its CommandCompletes separately).
 */
export function simpleResultSet(columns: readonly ColumnSpec[], rows: readonly (readonly (string | null)[])[], tag: string | undefined): Buffer[] {
  assert.ok(columns.length > 0, 'a result set has at least one column');
  const fields: FieldDescription[] = columns.map((column) => ({
    name: column.name,
    tableOid: NO_TABLE_OID,
    columnNumber: NO_COLUMN_NUMBER,
    typeOid: COLUMN_TYPES[column.type].oid,
    typeSize: COLUMN_TYPES[column.type].size,
    typeModifier: NO_TYPE_MODIFIER,
    format: 0,
  }));
  const messages = [rowDescription(fields)];
  for (const row of rows) {
    assert.equal(row.length, columns.length, 'every row has one value per column');
    messages.push(dataRow(row));
  }
  if (tag !== undefined) messages.push(commandComplete(tag));
  return messages;
}
