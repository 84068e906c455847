#!/usr/bin/env bash
# Install the language toolchains that sandboxed execution needs, where missing.
# Only as root (apt-get); otherwise say what is missing and carry on: the evaluation
# reports a missing toolchain as a status of its own.
set -u
need=()
command -v node >/dev/null || need+=(nodejs)
command -v g++ >/dev/null || need+=(g++)
command -v javac >/dev/null || need+=(default-jdk-headless)
command -v go >/dev/null || need+=(golang-go)
command -v php >/dev/null || need+=(php-cli)
command -v rustc >/dev/null || need+=(rustc)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "toolchains missing (not root or no apt-get, not installing): ${need[*]}" >&2
  exit 0
fi
echo "installing toolchains: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# wait for a dpkg lock held by another apt run instead of failing at once
lock=(-o DPkg::Lock::Timeout=300)
apt-get "${lock[@]}" update -qq >/dev/null 2>&1 || true
apt-get "${lock[@]}" install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "warning: apt-get could not install some of: ${need[*]}" >&2
still=()
for t in node g++ javac go php rustc; do command -v "$t" >/dev/null || still+=("$t"); done
[ ${#still[@]} -gt 0 ] && echo "still missing (tests expect status missing_toolchain): ${still[*]}" >&2
exit 0
