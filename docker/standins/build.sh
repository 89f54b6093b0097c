#!/usr/bin/env bash
# Stand-ins for the three base images docker/Dockerfile pins (python, maven, eclipse-temurin), for
# machines that can run containers but cannot pull images. One Debian bookworm root file system,
# laid out at the paths the Dockerfile uses, imported into podman under three names:
#   /usr/local/bin/python, pip   a venv at /usr/local: Debian's own pip refuses to install (PEP 668)
#   useradd                      Debian's passwd package, as in the python image
#   /opt/java/openjdk            a link to Debian's OpenJDK 17, where Temurin's image keeps its JRE
#   mvn                          Debian's Maven, for the stage that resolves the connector jars
# It has no mirror, index or repository of its own: Debian packages come from the first bookworm
# source in this host's apt configuration, and pip and Maven inside the builds find this host's
# pip.conf, Maven settings and extra CA certificates, copied in when the host has them.
#
# Usage: docker/standins/build.sh <cache dir>
# Writes <cache dir>/rootfs.tar once per input (the stamp below), imports it when podman's storage
# lacks it, and writes <cache dir>/build-args: the three `--build-arg NAME=image` values.
# Needs root (debootstrap, chroot) and podman configured by the caller (CONTAINERS_CONF etc.).
set -euo pipefail

cache="$(realpath -m "${1:?usage: $0 <cache dir>}")"
suite=bookworm
# What the Dockerfile's stages and the compose healthchecks run: python with venv (pip), Java 17,
# Maven, CA certificates for HTTPS, passwd (useradd), util-linux (setpriv for the jupyter entrypoint).
packages=python3,python3-venv,openjdk-17-jre-headless,maven,ca-certificates,passwd,util-linux,procps
images=(PYTHON_IMAGE=localhost/pulse-standin-python:"$suite"
        MAVEN_IMAGE=localhost/pulse-standin-maven:"$suite"
        TEMURIN_IMAGE=localhost/pulse-standin-temurin:"$suite")

# The host's bookworm mirror, from either apt source format: one-line sources.list entries and
# deb822 .sources files. The first main archive (not the security one) with the bookworm suite wins.
host_mirror() {
  local file
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$file" ]] || continue
    awk -v suite="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      if ($(i + 1) == suite && $i !~ /security/) { print $i; exit } }' "$file"
  done
  for file in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$file" ]] || continue
    # Paragraphs are blank-line separated; keep the URIs of one whose Suites has the bare suite.
    awk -v suite="$suite" 'BEGIN { RS = ""; FS = "\n" }
      { uri = ""; hit = 0
        for (n = 1; n <= NF; n++) {
          if ($n ~ /^URIs:/) { split($n, u, /[ \t]+/); uri = u[2] }
          if ($n ~ /^Suites:/) { m = split($n, s, /[ \t]+/); for (k = 2; k <= m; k++) if (s[k] == suite) hit = 1 }
        }
        if (hit && uri != "" && uri !~ /security/) { print uri; exit } }' "$file"
  done
}
mirror="$(host_mirror | head -n 1)"
[[ -n "$mirror" ]] || { echo "no '$suite' apt source on this host to build the stand-ins from" >&2; exit 1; }

# Host configuration copied into the stand-ins: the builds reach package indexes the way this host does.
host_files=()
for file in /etc/pip.conf /usr/local/share/ca-certificates/*.crt "${HOME:-/root}/.m2/settings.xml"; do
  [[ -f "$file" ]] && host_files+=("$file")
done

# Everything the root file system depends on; a change to any of it builds a new one.
stamp="$( { cat "$0"; echo "$suite $packages $mirror"; for file in "${host_files[@]}"; do
  echo "$file"; cat "$file"; done; } | sha256sum | cut -c1-16)"
mkdir -p "$cache"
log="$cache/build.log"

if [[ ! -f "$cache/rootfs.tar" || "$(cat "$cache/rootfs.stamp" 2>/dev/null)" != "$stamp" ]]; then
  echo "stand-ins: building a $suite root file system (log: $log)"
  rootfs="$cache/rootfs"
  rm -rf "$rootfs" "$cache/rootfs.tar" "$cache/rootfs.stamp"
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; exit 1; }

  for file in "${host_files[@]}"; do
    case "$file" in
      */.m2/settings.xml) install -D -m 0644 "$file" "$rootfs/root/.m2/settings.xml" ;;
      *) install -D -m 0644 "$file" "$rootfs$file" ;;
    esac
  done
  # The chroot needs /proc for Java: the CA hook rebuilds Java's trust store with keytool.
  mount -t proc proc "$rootfs/proc"
  trap 'umount "$rootfs/proc" 2>/dev/null || true' EXIT
  chroot "$rootfs" /bin/bash -euo pipefail -c '
    update-ca-certificates
    # The python image keeps Python and pip under /usr/local, where pip installs freely.
    python3 -m venv /usr/local
    ln -sf python3 /usr/local/bin/python
    /usr/local/bin/python -m pip --version
    java_home="$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")"
    mkdir -p /opt/java && ln -sfn "$java_home" /opt/java/openjdk
    /opt/java/openjdk/bin/java -version
    mvn -v
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
  ' >>"$log" 2>&1 || { tail -n 20 "$log" >&2; exit 1; }
  umount "$rootfs/proc"
  trap - EXIT
  tar -C "$rootfs" --numeric-owner -cf "$cache/rootfs.tar.part" .
  mv "$cache/rootfs.tar.part" "$cache/rootfs.tar"
  rm -rf "$rootfs"
  echo "$stamp" >"$cache/rootfs.stamp"
fi

# The images carry the stamp as a label: podman storage that was wiped, or holds an older root file
# system, gets this one.
first="${images[0]#*=}"
if [[ "$(podman image inspect --format '{{ index .Labels "pulse.standin" }}' "$first" 2>/dev/null)" != "$stamp" ]]; then
  echo "stand-ins: importing into podman"
  # The environment the official images set: a PATH (the Dockerfile extends it) and a UTF-8 locale.
  podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL pulse.standin=$stamp" \
    --change 'CMD ["/bin/bash"]' \
    "$cache/rootfs.tar" "$first" >>"$log" 2>&1
  for image in "${images[@]:1}"; do
    podman tag "$first" "${image#*=}"
  done
fi

printf '%s\n' "${images[@]}" >"$cache/build-args"
echo "stand-ins ready: $(tr '\n' ' ' <"$cache/build-args")"
