#!/bin/sh
# Used by deploy/Dockerfile: writes a stub `fn main() {}` for every Cargo target the manifest
# in the current directory names (lib, bins, benches, tests, examples: explicit `path`s, else
# the default location), so `cargo build` can compile the dependencies alone, in a layer
# that only changes with Cargo.toml and Cargo.lock. Existing files are left alone.
set -eu
stub() {
    mkdir -p "$(dirname "$1")"
    [ -e "$1" ] || echo 'fn main() {}' > "$1"
}
stub src/main.rs
stub src/lib.rs
awk 'function flush() {
       if (kind != "") print (path != "" ? path : dir "/" name ".rs")
       kind = ""; name = ""; path = "" }
     /^\[/ { flush() }
     /^\[lib\]/ { kind = "lib"; dir = "src"; name = "lib" }
     /^\[\[bin\]\]/ { kind = "bin"; dir = "src/bin" }
     /^\[\[bench\]\]/ { kind = "bench"; dir = "benches" }
     /^\[\[test\]\]/ { kind = "test"; dir = "tests" }
     /^\[\[example\]\]/ { kind = "example"; dir = "examples" }
     kind != "" && /^[[:space:]]*(name|path)[[:space:]]*=/ {
       match($0, /"[^"]*"/); v = substr($0, RSTART + 1, RLENGTH - 2)
       if ($0 ~ /^[[:space:]]*name/) name = v; else path = v }
     END { flush() }' Cargo.toml |
while read -r p; do
    stub "$p"
done
