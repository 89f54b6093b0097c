#!/usr/bin/env bash
# Entrypoint of the jupyter image: JupyterLab runs as whoever owns the mounted notebooks folder.
# A Linux bind mount keeps the host's numeric owner, so a fixed uid in the image can only save
# notebooks for a host user who happens to have it. Started as root, this script adopts the uid/gid
# of the folder, hands it HOME and the data volume, and drops to it with setpriv (util-linux, part
# of every Debian image) before JupyterLab starts. Root stays only when nobody else can write there.
set -euo pipefail

notebooks="$(realpath "${PULSE_NOTEBOOKS_DIR:-/home/pulse/notebooks}")"
home_dir="$(realpath "${PULSE_HOME_DIR:-/home/pulse}")"
data_dir="$(realpath -m "${PULSE_DATA_DIR:-/home/pulse/.pulse}")"
image_uid=10001

if [[ "$(id -u)" != 0 ]]; then
  # Started as a chosen user already (`user:` in compose, `docker run --user`): nothing to adopt.
  exec "$@"
fi

uid="$(stat -c %u "$notebooks")"
gid="$(stat -c %g "$notebooks")"
if [[ "$uid" == 0 ]]; then
  if setpriv --reuid="$image_uid" --regid="$image_uid" --clear-groups -- test -w "$notebooks"; then
    # Root-owned but writable by anyone (Docker Desktop's file sharing, a chmod 777): no need for root.
    uid="$image_uid" gid="$image_uid"
  elif [[ "${1:-}" == jupyter ]]; then
    # Only root can write here. With rootless Docker or Podman that root is the host user itself;
    # with rootful Docker the folder belongs to root on the host as well.
    set -- "$@" --allow-root
  fi
fi

# Spark (Hadoop's login) and getpass need a passwd entry for the uid, and one for the gid.
getent group "$gid" >/dev/null || printf 'pulse-%s:x:%s:\n' "$gid" "$gid" >>/etc/group
getent passwd "$uid" >/dev/null \
  || printf 'pulse-%s:x:%s:%s:Pulse notebooks:%s:/bin/bash\n' "$uid" "$uid" "$gid" "$home_dir" >>/etc/passwd

# JupyterLab writes its runtime files and workspaces under HOME and the notebook's Spark checkpoints
# go to the data volume, which keeps an earlier owner's files across restarts. The notebooks folder
# itself is never chowned: those are the host user's files.
mkdir -p "$data_dir"
chown "$uid:$gid" "$home_dir"
while IFS= read -r -d '' entry; do
  [[ "$entry" == "$notebooks" ]] && continue
  [[ "$(stat -c %u:%g "$entry")" == "$uid:$gid" ]] || chown -R "$uid:$gid" "$entry"
done < <(find "$home_dir" -mindepth 1 -maxdepth 1 -print0)
[[ "$(stat -c %u:%g "$data_dir")" == "$uid:$gid" ]] || chown -R "$uid:$gid" "$data_dir"

export HOME="$home_dir"
export USER
USER="$(getent passwd "$uid" | cut -d: -f1)"
echo "pulse jupyter: running as uid ${uid}, gid ${gid} (the owner of ${notebooks})" >&2
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
