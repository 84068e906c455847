#!/usr/bin/env bash
# Install the language toolchains that sandboxed execution needs, where missing.
#
# As root with apt-get: installs what is missing and exits non-zero - loudly - when apt
# fails or a toolchain is still missing afterwards, so a CI machine without toolchains
# cannot go green (its execution tests would otherwise have nothing to run).
# Not root or no apt-get: says what is missing; fails under CI (CI=true), where the
# toolchains are required, and carries on elsewhere (the evaluation reports a missing
# toolchain as a status of its own and the tests skip that language visibly).
set -u
tools=(node g++ javac go php rustc)
declare -A pkg=([node]=nodejs [g++]=g++ [javac]=default-jdk-headless [go]=golang-go
                [php]=php-cli [rustc]=rustc)
missing() { local t; for t in "${tools[@]}"; do command -v "$t" >/dev/null || echo "$t"; done; }
need=($(missing))
[ ${#need[@]} -eq 0 ] && exit 0
in_ci=false
case "${CI:-}" in true|TRUE|True|1) in_ci=true ;; esac
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "toolchains missing (not root or no apt-get, not installing): ${need[*]}" >&2
  $in_ci && { echo "error: CI needs every toolchain" >&2; exit 1; }
  exit 0
fi
pkgs=()
for t in "${need[@]}"; do pkgs+=("${pkg[$t]}"); done
echo "installing toolchains: ${pkgs[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# wait for a dpkg lock held by another apt run instead of failing at once
lock=(-o DPkg::Lock::Timeout=300)
if ! apt-get "${lock[@]}" update -qq; then
  echo "error: apt-get update failed" >&2
  exit 1
fi
if ! apt-get "${lock[@]}" install -y -qq --no-install-recommends "${pkgs[@]}"; then
  echo "error: apt-get install failed for: ${pkgs[*]}" >&2
  exit 1
fi
still=($(missing))
if [ ${#still[@]} -gt 0 ]; then
  echo "error: still missing after apt-get install: ${still[*]}" >&2
  exit 1
fi
