# ferry's daily loop. `just --list` shows every recipe; README.md explains the set-up.

set shell := ["bash", "-euo", "pipefail", "-c"]

deps_prefix := `tools/deps/fetch-build prefix 2>/dev/null || true`
export PKG_CONFIG_PATH := if env_var_or_default("FERRY_DEPS_FROM_NIX", "") == "1" { env_var_or_default("PKG_CONFIG_PATH", "") } else { deps_prefix + "/lib/pkgconfig" }

# list the recipes
default:
    @just --list

# install what is missing (Debian packages, just, pinned sources) and build the deps
setup:
    tools/setup

# fetch, verify and build the pinned dependencies (cached outside the tree)
deps:
    tools/deps/fetch-build build

# re-check every cached download against its pinned sha256
deps-verify:
    tools/deps/fetch-build verify

# move one pin to a new Debian package version: just deps-bump wolfssl 5.7.2-0.1+deb13u3
deps-bump name version:
    tools/deps/bump "{{name}}" "{{version}}"

# release build: one optimised ferry binary in build/release
build:
    [ -f build/release/build.ninja ] || meson setup build/release --buildtype=release -Db_lto=true
    meson compile -C build/release
    @objcopy --strip-all build/release/ferry build/release/ferry.stripped && echo "ferry: build/release/ferry ($(du -k build/release/ferry.stripped | cut -f1) KiB stripped)"

# debug build with ASan + UBSan, the one the tests use
build-debug:
    [ -f build/debug/build.ninja ] || meson setup build/debug --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
    meson compile -C build/debug

# the main job for now: make a node key and show the applets (the fleet demo comes with rollouts)
demo: build
    tools/smoke build/release/ferry

# the whole suite: unit and CLI tests under ASan+UBSan, fuzz smoke, lint, Nix parse
test: build-debug
    tools/run-tests

# unit and CLI tests only, under ASan+UBSan
test-unit: build-debug
    meson test -C build/debug --print-errorlogs

# release build in build/release, then every benchmark in it (tests/bench_*): JSON lines on stdout
bench:
    [ -f build/release/build.ninja ] || meson setup build/release --buildtype=release -Db_lto=true >&2
    meson compile -C build/release >&2
    tools/bench build/release

# run the fuzz targets: just fuzz [target] [seconds]
fuzz target="all" seconds="300":
    tools/fuzz "{{target}}" "{{seconds}}"

# format the C sources in place with .clang-format
fmt:
    git ls-files '*.c' '*.h' | xargs clang-format -i

# clang-tidy and cppcheck over our sources (fails on any finding), plus format check
lint: build-debug
    tools/lint

# parse every .nix file (no Nix store is reachable here)
nix-check:
    git ls-files '*.nix' | xargs -r -n1 nix-instantiate --parse >/dev/null

# remove build trees (the deps cache stays)
clean:
    rm -rf build
