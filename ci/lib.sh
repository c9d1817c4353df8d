# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source it
# Shared helpers for the ci/ scripts. Source it; do not run it.
# SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only

# Repository root (the parent of this file's folder).
CI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CI_ROOT

# The Debian toolchain used for kernel-target builds (soft-float core/alloc rebuilt with
# -Zbuild-std). Userspace builds keep the rustup toolchain.
KERNEL_RUSTC=/usr/bin/rustc
KERNEL_CARGO=/usr/bin/cargo
KERNEL_TARGET=x86_64-unknown-none
KERNEL_RUSTFLAGS="-Crelocation-model=static -Ccode-model=kernel -Zplt=yes -Cforce-unwind-tables=n \
-Zretpoline-external-thunk -Zindirect-branch-cs-prefix -Zfunction-return=thunk-extern"

ci_log() { printf '[%s] %s\n' "$(basename "$0")" "$*"; }
ci_warn() { printf '[%s] warning: %s\n' "$(basename "$0")" "$*" >&2; }
ci_die() { printf '[%s] error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# Prints the library source directory of the Debian rust toolchain, or nothing.
kernel_rust_src() {
    local sysroot
    [ -x "$KERNEL_RUSTC" ] || return 0
    sysroot="$("$KERNEL_RUSTC" --print sysroot 2>/dev/null)" || return 0
    if [ -d "$sysroot/lib/rustlib/src/rust/library/core" ]; then
        printf '%s\n' "$sysroot/lib/rustlib/src/rust/library"
    fi
}

# Lists fuzz target names (file stems of fuzz/fuzz_targets/*.rs), one per line.
fuzz_targets() {
    local f
    for f in "$CI_ROOT"/fuzz/fuzz_targets/*.rs; do
        [ -e "$f" ] || continue
        basename "$f" .rs
    done
}

# Formats a duration in seconds as "1m23s" / "45s".
ci_duration() {
    local s=$1
    if [ "$s" -ge 60 ]; then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}
