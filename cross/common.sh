# Shared by cross/build-aarch64 and cross/build-armv7 (sourced, not run).
#
# Cross builds use Debian's own Rust (rustc-web / cargo-web, /usr/bin/rustc and
# /usr/bin/cargo) because Debian packages the standard library for other architectures
# (libstd-rust-web-dev:ARCH); rustup cannot add targets on these machines. See cross/README.md.
#
# Variables a caller may set:
#   REACTOR_CROSS_TARGET_DIR  cargo target dir for cross builds
#                             (default: ${CARGO_TARGET_DIR:-~/.cache/reactor}/cross)
#   REACTOR_CROSS_NO_INSTALL=1  never call apt-get; fail if something is missing
#   REACTOR_CROSS_SKIP_SMOKE=1  build only
#   REACTOR_CROSS_PROFILE     cargo profile (default release-small, the shipped binary; CI's
#                             smoke build uses dev without debug info: see scripts/cross-check)

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CROSS_TARGET_DIR="${REACTOR_CROSS_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/reactor}/cross}"
DEB_RUSTC=/usr/bin/rustc
DEB_CARGO=/usr/bin/cargo
PROFILE=${REACTOR_CROSS_PROFILE:-release-small}
APT_UPDATED=0

say() { printf '== %s\n' "$*"; }
die() { printf 'cross: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

# pkg_version NAME[:ARCH] -> the installed version, or nothing.
pkg_version() {
    { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null || true; } |
        awk '$1 == "install" && $3 == "installed" { print $4 }'
}

apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        # Only the native architecture and the one being built: a mirror in sync can fail one
        # architecture's index (seen: bookworm-security armhf "File has unexpected size"), and
        # apt then drops that whole suite for every architecture.
        local archs
        archs=$(dpkg --print-architecture)${CROSS_ARCH:+,$CROSS_ARCH}
        say "apt-get update (architectures $archs)"
        as_root apt-get update -q -o "APT::Architectures=$archs" ||
            say "warning: apt-get update reported errors; continuing with the indexes it got"
        APT_UPDATED=1
    fi
}

# ensure_arch ARCH: a foreign dpkg architecture (arm64, armhf); also the one apt updates.
ensure_arch() {
    CROSS_ARCH=$1
    if ! { [ "$(dpkg --print-architecture)" = "$1" ] ||
        dpkg --print-foreign-architectures | grep -qx "$1"; }; then
        [ "${REACTOR_CROSS_NO_INSTALL:-0}" = 1 ] && die "dpkg architecture $1 missing"
        say "dpkg --add-architecture $1"
        as_root dpkg --add-architecture "$1"
        APT_UPDATED=0
    fi
}

# ensure_packages PKG…: installs those that are not installed (PKG may be NAME=VERSION).
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        [ -n "$(pkg_version "${p%%=*}")" ] || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "${REACTOR_CROSS_NO_INSTALL:-0}" = 1 ] && die "missing packages: ${missing[*]}"
    apt_update_once
    say "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# candidate_version PKG[:ARCH] -> what apt would install.
candidate_version() {
    { apt-cache policy "$1" 2>/dev/null || true; } | awk '/Candidate:/ { print $2; exit }'
}

# ensure_debian_rust ARCH: Debian's rustc/cargo plus the std of ARCH at the same version.
# Returns 1 (without failing) if apt cannot offer that std at rustc's version.
ensure_debian_rust() {
    local arch=$1 rustc_version std_version
    ensure_packages rustc-web cargo-web
    rustc_version=$(pkg_version rustc-web)
    std_version=$(pkg_version "libstd-rust-web-dev:$arch")
    if [ "$std_version" = "$rustc_version" ]; then
        return 0
    fi
    if [ "${REACTOR_CROSS_NO_INSTALL:-0}" = 1 ]; then
        return 1
    fi
    apt_update_once
    if ! { apt-cache madison "libstd-rust-web-dev:$arch" 2>/dev/null || true; } |
        awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | grep -qxF "$rustc_version"; then
        say "libstd-rust-web-dev:$arch $rustc_version is not offered by apt" \
            "(candidate: $(candidate_version "libstd-rust-web-dev:$arch"))"
        return 1
    fi
    say "apt-get install libstd-rust-web-dev:$arch=$rustc_version"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "libstd-rust-web-dev:$arch=$rustc_version"
}

# cross_build TARGET LINKER [EXTRA CARGO ARGS…]: builds reactor-agent statically with Debian's
# cargo and rustc, into $CROSS_TARGET_DIR; sets BIN.
cross_build() {
    local target=$1 linker=$2 upper lower
    shift 2
    upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
    lower=$(echo "$target" | tr '-' '_')
    [ -x "$DEB_RUSTC" ] || die "$DEB_RUSTC missing (apt-get install rustc-web)"
    [ -x "$DEB_CARGO" ] || die "$DEB_CARGO missing (apt-get install cargo-web)"
    say "$("$DEB_RUSTC" --version), $("$DEB_CARGO" --version)"
    say "build reactor-agent for $target (profile $PROFILE) into $CROSS_TARGET_DIR"
    local started=$SECONDS
    # Debian's cargo would otherwise run rustup's rustc from PATH. RUSTFLAGS would override
    # the per-target flags and reach build scripts too, so it is cleared.
    (
        cd "$REPO"
        env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u RUSTUP_TOOLCHAIN -u RUSTC_WRAPPER \
            RUSTC="$DEB_RUSTC" RUSTDOC=/usr/bin/rustdoc \
            CARGO_TARGET_DIR="$CROSS_TARGET_DIR" \
            "CARGO_TARGET_${upper}_LINKER=$linker" \
            "CARGO_TARGET_${upper}_RUSTFLAGS=-C target-feature=+crt-static" \
            "CC_${lower}=$linker" \
            "AR_${lower}=${linker%-gcc}-ar" \
            CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}" \
            "$DEB_CARGO" build --locked --profile "$PROFILE" -p reactor-agent \
            --target "$target" "$@"
    )
    say "build took $((SECONDS - started)) s"
    local dir=$PROFILE
    [ "$PROFILE" = dev ] && dir=debug
    BIN="$CROSS_TARGET_DIR/$target/$dir/reactor-agent"
    [ -x "$BIN" ] || die "no binary at $BIN"
}

# check_static: the binary must not need a dynamic loader on the device.
check_static() {
    local desc
    desc=$(file -b "$BIN")
    say "file: $desc"
    case "$desc" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) die "$BIN is not statically linked" ;;
    esac
}

print_size() {
    local bytes
    bytes=$(stat -c %s "$BIN")
    say "size: $bytes bytes ($(awk -v b="$bytes" 'BEGIN { printf "%.2f MiB", b / 1048576 }')) $BIN"
}

# ---- smoke test under qemu-user ---------------------------------------------------------

# expect_json NAME JQ-FILTER CMD…: runs CMD, checks its stdout with jq -e.
expect_json() {
    local name=$1 filter=$2 out code=0
    shift 2
    out=$("$@") || code=$?
    if ! printf '%s' "$out" | jq -e "$filter" >/dev/null 2>&1; then
        printf '%s\n' "$out" >&2
        die "smoke '$name': exit $code, output does not match: $filter"
    fi
    say "ok  $name"
}

# smoke QEMU: runs the cross-built agent under qemu-user.
smoke() {
    local qemu=$1 agent work port pid i
    command -v "$qemu" >/dev/null || die "$qemu missing (apt-get install qemu-user-static)"
    command -v jq >/dev/null || die "jq missing (apt-get install jq)"
    agent=("$qemu" "$BIN")
    work=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    say "smoke test under $qemu"
    cd "$REPO"

    local version
    version=$("${agent[@]}" --version)
    [[ $version == "reactor-agent "* ]] || die "unexpected --version: $version"
    say "ok  --version: $version"

    "${agent[@]}" validate workflows/ >"$work/validate.out" 2>&1 ||
        { cat "$work/validate.out" >&2; die "validate workflows/ failed"; }
    say "ok  validate workflows/"

    # Offline examples: a guard with an early return, the same workflow past the guard (log
    # + emit), a foreach with arithmetic, and file actions in a scratch folder.
    expect_json "exec door-access-guard (allowed badge)" \
        '.status == "succeeded" and .output.access == "granted"' \
        "${agent[@]}" exec workflows/door-access-guard.yaml --event '{"badge":"b-101","door":"north"}'
    expect_json "exec door-access-guard (unknown badge)" \
        '.status == "succeeded" and .output.access == "denied" and .output.badge == "x-9"' \
        "${agent[@]}" exec workflows/door-access-guard.yaml --event '{"badge":"x-9","door":"north"}'
    expect_json "exec compute-invoice" \
        '.status == "succeeded" and .output == {"net": 6, "tax": 3.0, "total": 9.0}' \
        "${agent[@]}" exec workflows/compute-invoice.yaml \
        --input '{"lines":[{"qty":3,"price":2}],"tax_rate":0.5}'
    mkdir -p "$work/logs"
    printf 'line 1\nline 2\n' >"$work/logs/app.log"
    expect_json "exec log-rotation (file actions)" \
        '.status == "succeeded" and .output.rotated == true' \
        "${agent[@]}" exec workflows/log-rotation.yaml --input "{\"dir\":\"$work/logs\"}"
    [ ! -s "$work/logs/app.log" ] || die "log-rotation did not empty app.log"

    # The daemon: journal, HTTP server and an http-triggered workflow with a sync reply.
    if command -v curl >/dev/null; then
        mkdir -p "$work/flows" "$work/data"
        cat >"$work/flows/echo.yaml" <<'EOF'
reactor: 1
name: smoke-echo
version: 1
triggers:
  - http: { path: /smoke, method: POST, response: sync }
steps:
  - id: double
    action: transform
    with: { value: "${{ event.data.n * 2 }}" }
output: { doubled: "${{ steps.double.output }}" }
EOF
        port=$((20000 + RANDOM % 20000))
        "${agent[@]}" run --workflows "$work/flows" --data "$work/data" \
            --listen "127.0.0.1:$port" >"$work/run.log" 2>&1 &
        pid=$!
        for i in $(seq 1 200); do
            curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
            kill -0 "$pid" 2>/dev/null || { cat "$work/run.log" >&2; die "the daemon exited"; }
            sleep 0.05
        done
        expect_json "run: POST /smoke (sync http trigger)" '.doubled == 42' \
            curl -fsS -X POST -H 'content-type: application/json' -d '{"n":21}' \
            "http://127.0.0.1:$port/smoke"
        kill -TERM "$pid"
        wait "$pid" || { cat "$work/run.log" >&2; die "the daemon did not exit 0 on SIGTERM"; }
        say "ok  run: /healthz, http trigger, SIGTERM exit 0"
    fi
}
