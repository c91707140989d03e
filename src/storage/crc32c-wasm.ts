/**
 * The CRC-32C slice-by-16 loop as a small WebAssembly function, built here from its opcodes (no binary artefact,
 * no toolchain, no native addon): crc32c.ts uses it for long ranges when the runtime has WebAssembly, and its own
 * TypeScript loop otherwise (e.g. node --jitless).
 *
 * Why: the TS backend checksums every page it verifies before sending (issue 13), and the CRC was the largest part
 * of its CPU per GB (of its first pass over a range: later ones find the pages verified). The same algorithm and
 * tables run ~1.8x faster as WebAssembly as from TypeScript (microbenchmark on 8 KiB pages, loaded 2-vCPU machine:
 * ~0.23 vs ~0.42 CPU s/GB in place, ~0.25 with the copy into WebAssembly memory below): table reads need no
 * typed-array bounds checks and fold their table offset into the load.
 *
 * WebAssembly reads only its own memory. Buffers allocated in it (allocate: the TS backend's send and verification
 * pools) are checksummed in place: a read lands in them and the loop runs over them where they are. Other bytes are
 * copied into a scratch area of it, SCRATCH_BYTES at a time (~0.02-0.03 CPU s/GB: the bytes were just read and are
 * in cache). The memory is fixed at MEMORY_PAGES (its maximum is its size) and never grows, so its ArrayBuffer is
 * never detached and the views and buffers made of it stay valid. Words are read little-endian, WebAssembly's byte
 * order on every host.
 *
 * The arena (ARENA_BYTES, after the tables and the scratch area) hands out buffers until it is full, then
 * allocate() answers undefined and the caller allocates on the heap (those bytes take the copy). A buffer's room
 * returns to the arena when the buffer is garbage-collected (FinalizationRegistry), so a pool that drops a buffer
 * or is dropped whole (tests make many backends) does not leak arena room. The pages of the memory are committed by
 * the kernel on first touch: the arena costs address space until buffers are used.
 */
import assert from 'node:assert/strict';

/** Sixteen 256-entry tables of 32-bit entries at the start of the memory. */
const TABLES_BYTES = 16 * 256 * 4;
/** Bytes copied in and folded per call into WebAssembly. */
const SCRATCH_BYTES = 64 * 1024;
/**
 * Bytes of the memory that buffers may be allocated in: the TS backend's send and verification pools,
 * (512 + 80) × (128 KiB + 30) ≈ 77.6 MiB (src/io/ts-backend.ts asserts they fit), with room to spare for a
 * few replacement buffers of written-off ones.
 */
export const ARENA_BYTES = 80 * 1024 * 1024;
/** Arena allocations start on a cache line. */
export const ARENA_ALIGNMENT = 64;
const ARENA_START = TABLES_BYTES + SCRATCH_BYTES;
const WASM_PAGE_BYTES = 64 * 1024;
const MEMORY_PAGES = Math.ceil((ARENA_START + ARENA_BYTES) / WASM_PAGE_BYTES);

/** Folds whole 16-byte steps; the caller folds the remaining (end - start) % 16 bytes itself. */
export interface WasmCrc32c {
  /** The state after bytes [start, start + steps × 16) of `bytes`, steps = floor((end - start) / 16). */
  updateSteps(state: number, bytes: Uint8Array, start: number, end: number): number;
  /** A buffer in the loop's memory (checksummed without a copy), or undefined when the arena has no room for it. */
  allocate(bytes: number): Buffer | undefined;
}

/** The WebAssembly loop over `tables` (crc32c.ts: 16 × 256 entries), or undefined where it cannot run. */
export function createWasmCrc32c(tables: Int32Array): WasmCrc32c | undefined {
  assert.equal(tables.length * 4, TABLES_BYTES, 'sixteen 256-entry tables');
  if (typeof WebAssembly !== 'object') return undefined;
  let update: (state: number, pointer: number, length: number) => number;
  let memory: WebAssembly.Memory;
  try {
    const instance = new WebAssembly.Instance(new WebAssembly.Module(moduleBytes()), {});
    memory = instance.exports.memory as WebAssembly.Memory;
    update = instance.exports.update as typeof update;
  } catch {
    return undefined;
  }
  const buffer = memory.buffer;
  new Int32Array(buffer, 0, tables.length).set(tables);
  const scratch = new Uint8Array(buffer, TABLES_BYTES, SCRATCH_BYTES);
  const arena = new Arena(buffer, ARENA_START, ARENA_BYTES);
  return {
    updateSteps(state: number, bytes: Uint8Array, start: number, end: number): number {
      const stepsEnd = start + ((end - start) & ~15);
      // Bytes already in the memory (an arena buffer, or any view of it) are folded where they are.
      if (bytes.buffer === buffer) return update(state, bytes.byteOffset + start, stepsEnd - start);
      let crc = state;
      for (let offset = start; offset < stepsEnd; offset += SCRATCH_BYTES) {
        const length = Math.min(SCRATCH_BYTES, stepsEnd - offset);
        scratch.set(bytes.subarray(offset, offset + length));
        crc = update(crc, TABLES_BYTES, length);
      }
      return crc;
    },
    allocate: (bytes) => arena.allocate(bytes),
  };
}

/**
 * Bump allocation over [start, start + bytes) of the memory, with the room of collected buffers reused by size (the
 * pools ask for one size, so a freed slot fits the next request exactly). Slots are ARENA_ALIGNMENT-aligned.
 */
class Arena {
  private next: number;
  private readonly end: number;
  /** Free slot offsets by slot size. */
  private readonly freeSlots = new Map<number, number[]>();
  private readonly collected = new FinalizationRegistry<{ readonly offset: number; readonly slotBytes: number }>((slot) => {
    let list = this.freeSlots.get(slot.slotBytes);
    if (list === undefined) this.freeSlots.set(slot.slotBytes, (list = []));
    list.push(slot.offset);
  });

  constructor(
    private readonly memory: ArrayBuffer,
    start: number,
    bytes: number,
  ) {
    this.next = start;
    this.end = start + bytes;
  }

  allocate(bytes: number): Buffer | undefined {
    assert.ok(Number.isSafeInteger(bytes) && bytes > 0, 'an arena buffer has a positive size');
    const slotBytes = Math.ceil(bytes / ARENA_ALIGNMENT) * ARENA_ALIGNMENT;
    let offset = this.freeSlots.get(slotBytes)?.pop();
    if (offset === undefined) {
      if (this.next + slotBytes > this.end) return undefined;
      offset = this.next;
      this.next += slotBytes;
    }
    const view = Buffer.from(this.memory, offset, bytes);
    this.collected.register(view, { offset, slotBytes });
    return view;
  }
}

// Opcodes and encodings used below (WebAssembly core spec, binary format).
const I32 = 0x7f;
const LOCAL_GET = 0x20;
const LOCAL_SET = 0x21;
const I32_CONST = 0x41;
const I32_LOAD = 0x28;
const I32_ADD = 0x6a;
const I32_AND = 0x71;
const I32_XOR = 0x73;
const I32_SHL = 0x74;
const I32_SHR_U = 0x76;
const I32_GE_U = 0x4f;
const BLOCK = 0x02;
const LOOP = 0x03;
const BR = 0x0c;
const BR_IF = 0x0d;
const END = 0x0b;
const EMPTY_BLOCK_TYPE = 0x40;

function unsignedLeb(value: number): number[] {
  const out: number[] = [];
  let rest = value >>> 0;
  do {
    const byte = rest & 0x7f;
    rest >>>= 7;
    out.push(rest === 0 ? byte : byte | 0x80);
  } while (rest !== 0);
  return out;
}

function signedLeb(value: number): number[] {
  const out: number[] = [];
  let rest = value | 0;
  for (;;) {
    const byte = rest & 0x7f;
    rest >>= 7;
    if ((rest === 0 && (byte & 0x40) === 0) || (rest === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

/**
 * update(crc, pointer, length) → crc, length a multiple of 16; locals: 0 crc, 1 pointer, 2 end, 3..6 the step's
 * four words (the first already xor-ed with crc). Per step: crc = xor over k of table[15 - k][byte k of the step].
 */
function moduleBytes(): Uint8Array<ArrayBuffer> {
  const get = (local: number): number[] => [LOCAL_GET, local];
  const set = (local: number): number[] => [LOCAL_SET, local];
  const constant = (value: number): number[] => [I32_CONST, ...signedLeb(value)];
  // Natural alignment hint 2 (4 bytes), then the static offset added to the address.
  const load = (offset: number): number[] => [I32_LOAD, 2, ...unsignedLeb(offset)];
  /** The four table lookups for the word in `local`, one code sequence each: bytes 0..3 index tables first..first-3. */
  const lookups = (local: number, firstTable: number): number[][] => {
    // (word << 2) & 0x3fc is byte 0 × 4; (word >>> 6) & 0x3fc byte 1 × 4; and so on.
    const shifts: [number, number][] = [
      [I32_SHL, 2],
      [I32_SHR_U, 6],
      [I32_SHR_U, 14],
      [I32_SHR_U, 22],
    ];
    return shifts.map(([shift, bits], byte) => [...get(local), ...constant(bits), shift, ...constant(0x3fc), I32_AND, ...load((firstTable - byte) * 1024)]);
  };
  /** The xor of `parts` as a balanced tree: V8 does not reassociate, so the depth of the code is the depth of the sum. */
  const xorTree = (parts: number[][]): number[] => {
    if (parts.length === 1) return parts[0]!;
    const half = parts.length >> 1;
    return [...xorTree(parts.slice(0, half)), ...xorTree(parts.slice(half)), I32_XOR];
  };
  const body = [
    ...get(1), ...get(2), I32_ADD, ...set(2),
    BLOCK, EMPTY_BLOCK_TYPE, LOOP, EMPTY_BLOCK_TYPE,
    ...get(1), ...get(2), I32_GE_U, BR_IF, 1,
    // word ^ crc, in that operand order: crc ^ word compiles (V8 11, x64) to a loop ~30% slower with the tree below.
    ...get(1), ...load(0), ...get(0), I32_XOR, ...set(3),
    ...get(1), ...load(4), ...set(4),
    ...get(1), ...load(8), ...set(5),
    ...get(1), ...load(12), ...set(6),
    // The twelve lookups of words 1..3 do not depend on the running crc, the four of word 0 do: those twelve are
    // summed first (they overlap the previous step's chain), then word 0's four in a tree of depth two, so the chain
    // from one step's crc to the next is xor, shift, and, load, two xors and the final one. Summed in input order
    // (word 0 first, one xor after another) the chain was fifteen xors long: ~0.39 CPU s/GB on 8 KiB pages against
    // ~0.23 now (loop alone, no copy).
    ...xorTree([...lookups(4, 11), ...lookups(5, 7), ...lookups(6, 3)]), ...xorTree(lookups(3, 15)), I32_XOR, ...set(0),
    ...get(1), ...constant(16), I32_ADD, ...set(1),
    BR, 0, END, END,
    ...get(0), END,
  ];
  const code = [1, 4, I32, ...body]; // one local declaration: four i32 locals
  const section = (id: number, bytes: number[]): number[] => [id, ...unsignedLeb(bytes.length), ...bytes];
  const name = (text: string): number[] => [text.length, ...Buffer.from(text, 'latin1')];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, 3, I32, I32, I32, 1, I32]), // type 0: (i32, i32, i32) -> i32
    ...section(3, [1, 0]), // function 0 has type 0
    // One memory of MEMORY_PAGES whose maximum is MEMORY_PAGES: it cannot grow (a grown memory detaches its buffer).
    ...section(5, [1, 0x01, ...unsignedLeb(MEMORY_PAGES), ...unsignedLeb(MEMORY_PAGES)]),
    ...section(7, [2, ...name('memory'), 0x02, 0, ...name('update'), 0x00, 0]),
    ...section(10, [1, ...unsignedLeb(code.length), ...code]),
  ]);
}
