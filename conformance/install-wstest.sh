#!/usr/bin/env bash
# install-wstest.sh - make sure the Autobahn|TestSuite runtime (wstest) is installed.
#
#   usage: conformance/install-wstest.sh        # prints the wstest path on success
#
# The suite (Python package autobahntestsuite) is Python-2.7-only code. Debian bookworm has
# no python2, so on first use this fetches Debian bullseye's python2.7 .debs from the
# mirror already configured on this machine (private apt state, nothing is installed into
# the system), unpacks them into a private prefix, bootstraps pip and installs a fully
# pinned set of py2.7 packages (+ wsaccel when a C compiler exists). Later runs reuse the
# cache (~0.02 s check). Adapted from ../shared/conformance/autobahn.sh so the project does
# not depend on it at run time.
#
# Environment (all optional):
#   AUTOBAHN_HOME        cache for the py2.7 runtime (default: $HOME/.cache/ringcast-autobahn-py27)
#   AUTOBAHN_ACCEL=0     install without the optional wsaccel C speedups
#   AUTOBAHN_APT_MIRROR  Debian mirror URI to use instead of the one in /etc/apt
#
# Needs: apt-get, dpkg, python3 with pip (only to download the pip wheel for py2.7).
# Exit status: 0 ready (last stdout line is the wstest path), 2 on install failure.
set -euo pipefail
{

# ----------------------------------------------------------------------------
# Pins. Changing anything here triggers a rebuild of the cache on the next run.
# ----------------------------------------------------------------------------
DEB_SUITE="bullseye"
DEB_PACKAGES="python2.7 python2.7-minimal libpython2.7-minimal libpython2.7-stdlib libssl1.1 libffi7"
PY27_DEB_VERSION="2.7.18-8+deb11u1"
PIP_BOOTSTRAP="pip==20.3.4"
PIP_BOOTSTRAP_WHEEL="pip-20.3.4-py2.py3-none-any.whl"
PIP_BOOTSTRAP_SHA256="217ae5161a0e08c0fb873858806e3478c9775caffce5168b50ec885e358c199d"
# Full transitive closure, as resolved and verified (pip check) on python 2.7.18.
# autobahntestsuite's own sdist pins autobahn 0.10.9 / Twisted 19.10.0 etc.; we
# keep those and drop autobahn's "accelerate" extra (wsaccel needs a C compiler).
PY27_REQUIREMENTS="
setuptools==44.0.0
wheel==0.37.1
autobahntestsuite==25.10.1
autobahn==0.10.9
txaio==2.1.0
Twisted==19.10.0
zope.interface==4.6.0
Automat==22.10.0
attrs==21.4.0
constantly==15.1.0
hyperlink==21.0.0
idna==2.10
incremental==16.10.1
PyHamcrest==1.9.0
typing==3.10.0.0
six==1.16.0
pyOpenSSL==19.1.0
cryptography==3.3.2
cffi==1.15.1
pycparser==2.21
enum34==1.1.10
ipaddress==1.0.23
service-identity==18.1.0
pyasn1==0.5.1
pyasn1-modules==0.3.0
Jinja2==2.11.3
MarkupSafe==1.1.1
Werkzeug==1.0.1
klein==17.10.0
unittest2==1.1.0
linecache2==1.0.0
traceback2==1.4.0
"
# Packages with C extensions: only take prebuilt manylinux cp27mu wheels (no compiler needed).
PY27_ONLY_BINARY="cffi,cryptography,MarkupSafe,Twisted,zope.interface"
# Optional C speedups (UTF-8 validation, masking) for the fuzzer itself: built from
# source when a C compiler is present, against headers from bullseye's libpython2.7-dev.
# ~3x faster 9.* / 12.* cases. Best effort; AUTOBAHN_ACCEL=0 skips it.
WSACCEL_PIN="wsaccel==0.6.2"

# soname -> bullseye package, for libraries the py2.7 extension modules may need
# that the host lacks (on bookworm normally only libssl1.1 and libffi7).
SONAME_PACKAGES="
libssl.so.1.1=libssl1.1
libcrypto.so.1.1=libssl1.1
libffi.so.7=libffi7
libsqlite3.so.0=libsqlite3-0
libreadline.so.8=libreadline8
libncursesw.so.6=libncursesw6
libtinfo.so.6=libtinfo6
libpanelw.so.6=libncursesw6
libgdbm.so.6=libgdbm6
libgdbm_compat.so.4=libgdbm-compat4
libdb-5.3.so=libdb5.3
libbz2.so.1.0=libbz2-1.0
liblzma.so.5=liblzma5
libexpat.so.1=libexpat1
libz.so.1=zlib1g
libnsl.so.2=libnsl2
libtirpc.so.3=libtirpc3
libcrypt.so.1=libcrypt1
libuuid.so.1=libuuid1
libmpdec.so.2=libmpdec3
"
# extension modules that must load for wstest to work
PY27_REQUIRED_MODULES="ssl hashlib ctypes zlib json socket select"

# ----------------------------------------------------------------------------
say()  { printf '%s\n' "install-wstest.sh: $*" >&2; }
die()  { say "error: $*"; exit 2; }

case "${1:-}" in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 0 ;;
  "") ;;
  *) die "unexpected argument: $1 (see --help)" ;;
esac

HOME_DIR="${AUTOBAHN_HOME:-${HOME:?HOME is not set}/.cache/ringcast-autobahn-py27}"
LOG="$HOME_DIR/install.log"
PREFIX="$HOME_DIR/root"
STAMP="$PREFIX/.autobahn-stamp"

# a python3 that has pip (only used to download the pip wheel for python2.7)
PY3_PIP=""
for c in python3 /usr/bin/python3; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -m pip --version >/dev/null 2>&1; then PY3_PIP="$c"; break; fi
done

pin_digest() {
  printf '%s\n' "$DEB_SUITE" "$DEB_PACKAGES" "$PY27_DEB_VERSION" "$PIP_BOOTSTRAP" \
    "$PIP_BOOTSTRAP_SHA256" "$PY27_REQUIREMENTS" "$PY27_ONLY_BINARY" "$SONAME_PACKAGES" "$WSACCEL_PIN" | sha256sum | cut -c1-16
}

# run a python2.7 runtime prefix (via its generated launcher) with pip settings
py27_in() {
  local prefix="$1"; shift
  PIP_CACHE_DIR="$HOME_DIR/pip-cache" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_PYTHON_VERSION_WARNING=1 \
    "$prefix/bin/python2.7" "$@"
}

# launchers inside the prefix; they locate themselves, so the prefix can be moved
write_launchers() {
  local prefix="$1"
  mkdir -p "$prefix/bin"
  cat > "$prefix/bin/python2.7" <<'EOF'
#!/bin/sh
# python2.7 from Debian bullseye debs, unpacked privately (generated by ringcast conformance/install-wstest.sh)
R=$(cd "$(dirname "$0")/.." && pwd)
L=
for d in "$R"/usr/lib/*-linux-gnu* "$R"/lib/*-linux-gnu*; do
  [ -d "$d" ] && L="${L:+$L:}$d"
done
unset PYTHONPATH PYTHONSTARTUP
PYTHONHOME="$R/usr"; PYTHONNOUSERSITE=1
LD_LIBRARY_PATH="$L${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONHOME PYTHONNOUSERSITE LD_LIBRARY_PATH
exec "$R/usr/bin/python2.7" "$@"
EOF
  cat > "$prefix/bin/wstest" <<'EOF'
#!/bin/sh
# Autobahn|TestSuite wstest on the private python2.7 (generated by ringcast conformance/install-wstest.sh)
exec "$(dirname "$0")/python2.7" -c 'import sys; sys.argv[0] = "wstest"; from autobahntestsuite.wstest import run; run()' "$@"
EOF
  chmod 755 "$prefix/bin/python2.7" "$prefix/bin/wstest"
}

# ---------------------------------------------------------------- mirror URI
mirror_uri() {
  if [ -n "${AUTOBAHN_APT_MIRROR:-}" ]; then printf '%s\n' "$AUTOBAHN_APT_MIRROR"; return; fi
  local f uri="" codename=""
  codename=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}") || true
  # deb822 files: first stanza listing the host's own suite (or any non-security suite
  # when the codename is unknown), i.e. the main Debian archive, not a third-party repo
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri=$(awk -v cn="$codename" '
      function flush() { if (uris != "" && ok && !done) { split(uris, u, " "); print u[1]; done=1 } uris=""; ok=0 }
      /^[ \t]*$/ { flush(); next }
      tolower($1) == "uris:"   { $1=""; uris=$0 }
      tolower($1) == "suites:" { for (i=2;i<=NF;i++) if (cn != "" ? $i == cn : $i !~ /-security$/) ok=1 }
      END { flush() }' "$f")
    [ -n "$uri" ] && { printf '%s\n' "$uri"; return; }
  done
  # one-line format
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(awk -v cn="$codename" '$1=="deb" { i=2; if ($2 ~ /^\[/) { while (i<=NF && $i !~ /\]$/) i++; i++ }
                           if (cn != "" ? $(i+1) == cn : $(i+1) !~ /-security/) { print $i; exit } }' "$f")
    [ -n "$uri" ] && { printf '%s\n' "$uri"; return; }
  done
  return 1
}

# ---------------------------------------------------------------- install
install_runtime() {
  local build="$HOME_DIR/root.new" aptdir="$HOME_DIR/apt" debs="$HOME_DIR/debs" wheels="$HOME_DIR/wheels"
  local uri keyring arch
  command -v apt-get >/dev/null || die "apt-get not found (this script needs a Debian-family host)"
  command -v dpkg >/dev/null || die "dpkg not found"

  uri=$(mirror_uri) || die "could not find a Debian mirror URI in /etc/apt (set AUTOBAHN_APT_MIRROR)"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -r "$keyring" ] || die "$keyring missing (apt-get install debian-archive-keyring)"
  arch=$(dpkg --print-architecture)
  echo "== mirror: $uri ($DEB_SUITE main, $arch)"

  rm -rf "$build" "$aptdir"
  mkdir -p "$build" "$aptdir/lists/partial" "$aptdir/archives/partial" "$debs" "$wheels"
  printf 'deb [arch=%s signed-by=%s target=Packages] %s %s main\n' "$arch" "$keyring" "$uri" "$DEB_SUITE" \
    > "$aptdir/sources.list"
  local -a APT=(-q -o "Dir::Etc::sourcelist=$aptdir/sources.list" -o "Dir::Etc::sourceparts=-"
                -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache::archives=$aptdir/archives"
                -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root"
                -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1")

  echo "== apt-get update ($DEB_SUITE)"
  apt-get "${APT[@]}" update

  fetch_debs() {  # download (if not cached) and unpack the given packages
    local p f
    for p in "$@"; do
      if ! ls "$debs/${p}_"*.deb >/dev/null 2>&1; then
        (cd "$debs" && apt-get "${APT[@]}" download "$p")
      fi
      for f in "$debs/${p}_"*.deb; do
        echo "   unpack $(basename "$f")"
        dpkg -x "$f" "$build"
      done
    done
  }

  echo "== fetch + unpack python2.7 debs"
  # shellcheck disable=SC2086
  fetch_debs $DEB_PACKAGES
  ls "$debs/python2.7_${PY27_DEB_VERSION}_"*.deb >/dev/null 2>&1 || \
    echo "   note: python2.7 version differs from pinned $PY27_DEB_VERSION: $(ls "$debs"/python2.7_*.deb)"

  # resolve missing shared libraries (ldd) via the soname table, a few rounds
  local _round missing extra so pkg libpath d
  for _round in 1 2 3; do
    libpath=""
    for d in "$build"/usr/lib/*-linux-gnu* "$build"/lib/*-linux-gnu*; do
      [ -d "$d" ] && libpath="${libpath:+$libpath:}$d"
    done
    missing=$( { find "$build/usr/bin/python2.7" "$build/usr/lib" "$build/lib" -maxdepth 3 -type f \
                     \( -name 'python2.7' -o -name '*.so' -o -name '*.so.*' \) 2>/dev/null || true; } \
              | while read -r f; do { LD_LIBRARY_PATH="$libpath" ldd "$f" 2>/dev/null || true; } | awk '/not found/ {print $1}'; done \
              | sort -u)
    [ -z "$missing" ] && break
    extra=""
    for so in $missing; do
      pkg=$(printf '%s\n' "$SONAME_PACKAGES" | awk -F= -v s="$so" '$1==s {print $2}')
      if [ -n "$pkg" ]; then extra="$extra $pkg"; else echo "   warning: no package known for missing $so"; fi
    done
    extra=$(printf '%s\n' $extra | sort -u | tr '\n' ' ')
    [ -z "${extra// /}" ] && break
    echo "== missing libs: $(echo $missing) -> fetching: $extra"
    # shellcheck disable=SC2086
    fetch_debs $extra
  done

  write_launchers "$build"
  echo "== check python2.7 modules"
  py27_in "$build" -c "import sys; import $(echo $PY27_REQUIRED_MODULES | tr ' ' ','); print(sys.version.split()[0])"

  echo "== bootstrap pip ($PIP_BOOTSTRAP) via python3 pip download"
  if [ ! -f "$wheels/$PIP_BOOTSTRAP_WHEEL" ]; then
    [ -n "$PY3_PIP" ] || { echo "no python3 with pip found (apt-get install python3-pip)"; return 1; }
    "$PY3_PIP" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
      -d "$wheels" "$PIP_BOOTSTRAP"
  fi
  echo "$PIP_BOOTSTRAP_SHA256  $wheels/$PIP_BOOTSTRAP_WHEEL" | sha256sum -c - || {
    rm -f "$wheels/$PIP_BOOTSTRAP_WHEEL"; echo "pip wheel checksum mismatch"; return 1; }
  py27_in "$build" "$wheels/$PIP_BOOTSTRAP_WHEEL/pip" install --no-warn-script-location \
    "$wheels/$PIP_BOOTSTRAP_WHEEL" "$(printf '%s\n' "$PY27_REQUIREMENTS" | grep '^setuptools==')" \
    "$(printf '%s\n' "$PY27_REQUIREMENTS" | grep '^wheel==')"

  echo "== pip install (python2.7)"
  printf '%s\n' "$PY27_REQUIREMENTS" | sed '/^$/d' > "$HOME_DIR/requirements-py27.txt"
  py27_in "$build" -m pip install --no-warn-script-location --prefer-binary \
    --only-binary="$PY27_ONLY_BINARY" -r "$HOME_DIR/requirements-py27.txt"
  py27_in "$build" -m pip check

  if [ "${AUTOBAHN_ACCEL:-1}" = 1 ] && command -v "${CC:-cc}" >/dev/null 2>&1; then
    echo "== optional: build $WSACCEL_PIN (needs libpython2.7-dev headers + a C compiler)"
    if fetch_debs libpython2.7-dev && [ -f "$build/usr/include/python2.7/Python.h" ] && \
       CFLAGS="-I$build/usr/include -I$build/usr/include/python2.7" \
         py27_in "$build" -m pip install --no-warn-script-location --no-binary=wsaccel "$WSACCEL_PIN" && \
       py27_in "$build" -c "import wsaccel.utf8validator, wsaccel.xormask"; then
      echo "   wsaccel: built"
    else
      echo "   wsaccel: build FAILED, continuing without it (the fuzzer is just slower)"
    fi
    rm -f "$build"/usr/lib/*-linux-gnu*/libpython2.7*.a   # static lib from the -dev deb, unused
  else
    echo "== wsaccel skipped (AUTOBAHN_ACCEL=0 or no C compiler)"
  fi
  echo "== smoke test"
  py27_in "$build" -c "import autobahntestsuite, autobahn, twisted; from autobahntestsuite import wstest; \
print('autobahntestsuite %s, autobahn %s, twisted %s' % (autobahntestsuite.version, autobahn.version, twisted.__version__))"

  pin_digest > "$build/.autobahn-stamp"
  rm -rf "$PREFIX"
  mv "$build" "$PREFIX"
  rm -rf "$aptdir"   # the bullseye package lists are ~17 MB; the .debs stay in $debs
}

ensure_runtime() {
  mkdir -p "$HOME_DIR"
  exec 9>"$HOME_DIR/.lock"
  if command -v flock >/dev/null; then flock 9; fi
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(pin_digest)" ] && [ -x "$PREFIX/usr/bin/python2.7" ]; then
    exec 9>&-
    return 0
  fi
  local t0=$SECONDS
  say "installing the python2.7 + autobahntestsuite runtime into $HOME_DIR (log: $LOG) ..."
  local rc
  # (not inside "if": errexit must stay active in the subshell)
  set +e
  ( set -euo pipefail; install_runtime ) > "$LOG" 2>&1
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    say "install FAILED (exit $rc) after $((SECONDS - t0))s; last lines of $LOG:"
    tail -n 40 "$LOG" >&2
    exit 2
  fi
  say "installed in $((SECONDS - t0))s"
  exec 9>&-
}

ensure_runtime
printf '%s\n' "$PREFIX/bin/wstest"
exit 0
}
