# Builds the native I/O addon (native/): sendfile / writev / io_uring sends and io_uring prefetch reads for walcast,
# plus the kernel TLS probe (native/kernel-tls.cc).
# Built offline by scripts/build-native.mjs (node-gyp --nodedir=/usr); a failed build leaves walcast on its TS backend.
# WALCAST_NATIVE_SANITIZE=address (set by scripts/build-native-asan.mjs, which builds into build-asan/) adds
# AddressSanitizer; the addon then only loads into a node started with LD_PRELOAD=libasan.so.
{
  "variables": {
    "walcast_sanitize%": "<!(node -p \"process.env.WALCAST_NATIVE_SANITIZE || 'none'\")"
  },
  "targets": [
    {
      "target_name": "walcast_native",
      "conditions": [
        ["OS=='linux'", {
          "sources": [
            "native/addon.cc",
            "native/crc32c.cc",
            "native/native-errors.cc",
            "native/file-maps.cc",
            "native/io-engine.cc",
            "native/kernel-loans.cc",
            "native/kernel-tls.cc",
            "native/readahead-thread.cc",
            "native/tcp-congestion.cc"
          ],
          "libraries": ["-luring"]
        }],
        ["walcast_sanitize=='address'", {
          "cflags_cc": ["-fsanitize=address", "-fno-omit-frame-pointer"],
          "ldflags": ["-fsanitize=address"]
        }]
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_DISABLE_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags_cc!": ["-std=gnu++17"],
      "cflags_cc": [
        "-std=c++17",
        "-isystem", "<!(node -p \"require('path').resolve(require('node-addon-api').include_dir)\")",
        "-fvisibility=hidden",
        "-Wall",
        "-Wextra",
        "-Wshadow",
        "-Wformat=2",
        "-Wnon-virtual-dtor",
        "-Wold-style-cast",
        "-Wnull-dereference",
        "-Wimplicit-fallthrough"
      ],
      # Both configurations check invariants (WALCAST_ASSERT, native/invariant.h, independent of NDEBUG): a broken
      # one means memory shared with the kernel is wrong, and stopping beats streaming bad bytes. Debug adds -g.
      "configurations": {
        "Debug": { "cflags_cc": ["-O1", "-g"] },
        "Release": { "cflags_cc": ["-O2"] }
      }
    }
  ]
}
