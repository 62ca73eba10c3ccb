#!/usr/bin/env bash
# tidy.sh - source rules that rustc/clippy do not check (see ../shared/STYLE.md):
#   1. no `unsafe` (block, fn, impl, trait, extern block, unsafe attribute) outside
#      src/driver/ and src/buf/; scanned: src/, tests/, benches/, fuzz/fuzz_targets/
#   2. src/proto/ stays sans-IO: no crate::driver, crate::shard, std::net,
#      std::time::Instant / SystemTime, io_uring, libc
#   3. no todo!( / unimplemented!( in src/
# `//` comments are ignored (text after `//` on a line, so also doc comments).
# Run from anywhere; exits 1 and lists file:line for each violation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

violations=0
report() {  # rule, file, numbered lines
  local rule=$1 file=$2 lines=$3
  while IFS= read -r l; do
    printf '  %s:%s\n' "$file" "$l"
  done <<< "$lines"
  printf '    ^ %s\n' "$rule"
  violations=$((violations + $(printf '%s\n' "$lines" | wc -l)))
}
check() {  # rule, extended regex, files...
  local rule=$1 re=$2 f hits; shift 2
  for f in "$@"; do
    hits=$(sed -E 's#//.*$##' "$f" | grep -nE "$re" || true)
    [ -n "$hits" ] && report "$rule" "$f" "$hits"
  done
  return 0
}
rs_files() {  # dirs... -> .rs files (sorted), skipping build output
  local d
  for d in "$@"; do
    [ -d "$d" ] && find "$d" -name target -prune -o -type f -name '*.rs' -print
  done | LC_ALL=C sort
}

mapfile -t all < <(rs_files src tests benches fuzz/fuzz_targets)
mapfile -t src < <(rs_files src)
mapfile -t proto < <(rs_files src/proto)
unsafe_scope=()
for f in "${all[@]+"${all[@]}"}"; do
  case "$f" in src/driver/*|src/buf/*) ;; *) unsafe_scope+=("$f") ;; esac
done

UNSAFE_RE='(^|[^[:alnum:]_])unsafe[[:space:]]*(\{|\(|fn([^[:alnum:]_]|$)|impl([^[:alnum:]_]|$)|trait([^[:alnum:]_]|$)|extern([^[:alnum:]_]|$)|$)'
check "unsafe outside src/driver/ and src/buf/" "$UNSAFE_RE" "${unsafe_scope[@]+"${unsafe_scope[@]}"}"

check "src/proto must not use the driver or shard layers" \
  '(crate|super)::(super::)*(driver|shard)([^[:alnum:]_]|$)|crate::\{[^}]*(^|[^[:alnum:]_])(driver|shard)([^[:alnum:]_]|$)' \
  "${proto[@]+"${proto[@]}"}"
check "src/proto must not do network I/O (std::net)" \
  '(^|[^[:alnum:]_])std::(net([^[:alnum:]_]|$)|\{[^}]*(^|[^[:alnum:]_])net([^[:alnum:]_]|$))' \
  "${proto[@]+"${proto[@]}"}"
check "src/proto must not read clocks (Instant / SystemTime)" \
  'std::time::(Instant|SystemTime)|std::time::\{[^}]*(Instant|SystemTime)|(^|[^[:alnum:]_])(Instant|SystemTime)::now' \
  "${proto[@]+"${proto[@]}"}"
check "src/proto must not use io_uring or libc" \
  '(^|[^[:alnum:]_])(io_uring|libc)([^[:alnum:]_]|$)' \
  "${proto[@]+"${proto[@]}"}"

check "no todo!/unimplemented! in src/" \
  '(^|[^[:alnum:]_])(todo|unimplemented)![[:space:]]*[([{]' \
  "${src[@]+"${src[@]}"}"

if [ "$violations" -ne 0 ]; then
  echo "tidy: $violations violation(s)"
  exit 1
fi
echo "tidy: ok (${#all[@]} files)"
