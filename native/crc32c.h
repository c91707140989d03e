// Owns CRC-32C (Castagnoli) in the addon: a hardware path (SSE4.2 crc32q, three independent lanes combined with
// zero-shift tables, after Mark Adler's crc32c.c) chosen by a runtime CPU check, a portable slice-by-8 fallback,
// and the JavaScript functions that checksum a Buffer or the 8 KiB pages of a file range (read through a shared
// read-only mapping, so a page is checksummed where it lies in the page cache, never copied).
// It knows nothing of WAL: the TypeScript page verifier (src/storage/page-verifier.ts) decides what to check.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace walcast {

// Folds [data, data + length) into a running, pre-conditioned state (INIT_CRC32C = 0xFFFFFFFF; finish with ~).
uint32_t Crc32cUpdate(uint32_t state, const uint8_t* data, size_t length);
// The portable path, always available (tests compare it with the hardware path).
uint32_t Crc32cUpdateSoftware(uint32_t state, const uint8_t* data, size_t length);
// Whether Crc32cUpdate uses the CPU's CRC-32C instruction.
bool Crc32cHardware();

// Adds crc32cUpdate, crc32cUpdateSoftware, crc32cFilePages and crc32cHardware to the addon's exports.
void RegisterCrc32c(Napi::Env env, Napi::Object exports);

}  // namespace walcast
