# shellcheck shell=bash
# deb_fetch PACKAGE VERSION SHA256 DIR: downloads one Debian package with
# apt-get download (no root needed), into DIR, checks its SHA-256 and
# prints its path. A fresh machine may have empty package lists: as root,
# it runs apt-get update once and tries again.
deb_fetch() {
  local pkg=$1 version=$2 sha=$3 dir=$4 deb
  chmod 777 "$dir" # apt's sandbox user writes the download
  _deb_get() { (cd "$dir" && apt-get download -q "$pkg=$version" 2>&1 | grep -v "^W: Download is performed unsandboxed" >&2 || true); }
  _deb_get
  deb=$(ls "$dir/${pkg}_"*.deb 2>/dev/null | head -1)
  if [ -z "$deb" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null 2>&1 || true
    _deb_get
    deb=$(ls "$dir/${pkg}_"*.deb 2>/dev/null | head -1)
  fi
  if [ -z "$deb" ]; then
    echo "apt-get download $pkg=$version failed (is Debian's main component in the apt sources?)" >&2
    return 1
  fi
  echo "$sha  $deb" | sha256sum --check --quiet >&2 || return 1
  echo "$deb"
}
