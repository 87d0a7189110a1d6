# dep8's unshare holder: pid 1 of a testbed's pid namespace, inside its own
# mount, uts, ipc (and by default net) namespaces. It mounts the testbed,
# answers `revert`, `commit`, `stack LAYER` and `keep DEST` requests on
# stdin (one line each: `dep8-holder: ok` or `dep8-holder: failed`), and on
# end of input (dep8 closed the testbed, or
# died) kills everything, unmounts and removes DIR. Every mount lives in the
# private mount namespace, so the host's mount table never changes.
# A tarball is unpacked once into a tmpfs at DIR/lower (fast, and gone with
# the namespace); a directory is used in place.
# Usage: holder.sh DIR (tarball|dir) PATH SCRATCH (private|host) BASEIMAGE USERNS [OUTSIDE INSIDE]...
# (BASEIMAGE and USERNS are yes or no; each OUTSIDE INSIDE pair is a host dir
# bind-mounted into the testbed.)
set -u
exec 2>&1
dir=$1 kind=$2 source=$3 scratch=$4 network=$5 baseimage=$6 userns=$7
shift 7
root=$dir/root
rw=$dir/rw
lower=$source
if [ "$kind" = tarball ]; then
    lower=$dir/lower
    mkdir "$lower" &&
        mount -t tmpfs -o mode=0755 dep8-lower "$lower" &&
        tar --numeric-owner --exclude='./dev/*' -C "$lower" -xf "$source" || {
        echo "dep8-holder: failed to unpack $source"
        exit 1
    }
fi
read -r hostname < /proc/sys/kernel/hostname

# fstab escapes for paths.
esc() {
    local s=${1//\\/\\134}
    s=${s// /\\040}
    printf '%s' "${s//$'\t'/\\011}"
}

# A minimal /dev, made once and bind-mounted into every fresh testbed.
mkdir "$dir/dev" &&
    mount -t tmpfs -o mode=0755,nosuid dep8-dev "$dir/dev" &&
    for node in null zero full random urandom tty; do
        touch "$dir/dev/$node" && mount --bind "/dev/$node" "$dir/dev/$node" || exit 1
    done &&
    ln -s /proc/self/fd "$dir/dev/fd" &&
    ln -s /proc/self/fd/0 "$dir/dev/stdin" &&
    ln -s /proc/self/fd/1 "$dir/dev/stdout" &&
    ln -s /proc/self/fd/2 "$dir/dev/stderr" &&
    ln -s pts/ptmx "$dir/dev/ptmx" &&
    mkdir "$dir/dev/pts" "$dir/dev/shm" || {
    echo "dep8-holder: failed to make /dev"
    exit 1
}

# Everything mounted on a fresh overlay whose lower layers are $1, in
# order, so that one `mount` call does it all (a revert costs a handful of
# processes, not dozens). The overlay's lower layers are usually $layers:
# the pristine rootfs under the upper layers of every commit, newest first.
layers=$lower
fstab=$dir/fstab
write_fstab() {
    echo "dep8-root $(esc "$root") overlay lowerdir=$(esc "$1"),upperdir=$(esc "$rw/upper"),workdir=$(esc "$rw/work") 0 0"
    echo "proc $(esc "$root/proc") proc nosuid,nodev,noexec 0 0"
    if [ "$network" = host ] && ! grep -qE '^ *0 +0 +4294967295$' /proc/self/uid_map; then
        # In a user namespace (ours, or the one a nested dep8 runs in),
        # sysfs can only be mounted by the owner of the net namespace
        echo "/sys $(esc "$root/sys") none rbind 0 0"
    else
        echo "sysfs $(esc "$root/sys") sysfs ro,nosuid,nodev,noexec 0 0"
    fi
    echo "$(esc "$dir/dev") $(esc "$root/dev") none rbind 0 0"
    echo "devpts $(esc "$root/dev/pts") devpts newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec 0 0"
    echo "dep8-shm $(esc "$root/dev/shm") tmpfs mode=1777,nosuid,nodev 0 0"
    if [ "$baseimage" = yes ]; then
        echo "$(esc "$lower") $(esc "$root/run/dep8/baseimage") none bind,ro,X-mount.mkdir 0 0"
    fi
    set -- "${binds[@]}"
    while [ $# -ge 2 ]; do
        echo "$(esc "$1") $(esc "$root$2") none rbind,X-mount.mkdir 0 0"
        shift 2
    done
}
binds=("$@")

# A fresh testbed: an empty tmpfs upper layer over the pristine lower one.
up() {
    mount -t tmpfs -o mode=0755 dep8-rw "$rw" &&
        mkdir "$rw/upper" "$rw/work" &&
        write_fstab "$layers" > "$fstab" &&
        mount --all --fstab "$fstab" &&
        mkdir -m 755 "$root$scratch" &&
        if [ "$network" = host ]; then
            rm -f "$root/etc/resolv.conf" && cp -L /etc/resolv.conf "$root/etc/resolv.conf"
        fi &&
        hosts &&
        restore_hostname
}

# A rootfs without /etc/hosts (mmdebstrap makes none) gets one naming the
# testbed, as container runtimes do: sudo and others resolve the hostname.
hosts() {
    [ -e "$root/etc/hosts" ] ||
        printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
            "$hostname" > "$root/etc/hosts"
}

# A test may have renamed the testbed (its own uts namespace).
restore_hostname() {
    local now
    read -r now < /proc/sys/kernel/hostname
    [ "$now" = "$hostname" ] || hostname "$hostname"
}

# Kills every other process of the pid namespace and waits until all are
# gone (the shell reaps the ones it inherits).
kill_all() {
    kill -KILL -1 2>/dev/null
    i=0
    while kill -0 -1 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt 2000 ]; then
            echo "processes in the testbed survive SIGKILL"
            return 1
        fi
        sleep 0.005
    done
}

# Makes the testbed's present state the base reverts return to: the upper
# layer (without the scratch dir) becomes the top lower layer, its tmpfs
# kept mounted, and the next upper layer is a new tmpfs at DIR/rwN.
commits=0
commit() {
    kill_all &&
        rm -rf "$root$scratch" &&
        down_root &&
        layers=$rw/upper:$layers &&
        commits=$((commits + 1)) &&
        rw=$dir/rw$commits &&
        mkdir "$rw" &&
        up
}

# Whether no process but this one runs in the testbed: a layer holds
# files, not the daemons an install started, nor may stacking one kill
# those.
alone() {
    if kill -0 -1 2>/dev/null; then
        echo "processes run in the testbed"
        return 1
    fi
}

# Puts the kept layer $1 (a dir, as `keep` made it) beneath the changes
# since the last revert, until the next revert: the overlay is mounted
# again over the same upper layer (only while nothing runs in it).
stack() {
    alone && down_root || return 1
    write_fstab "$1:$layers" > "$fstab" && mount --all --fstab "$fstab" && return 0
    # Not stacked: the testbed as it was.
    down_root 2>/dev/null
    write_fstab "$layers" > "$fstab" && mount --all --fstab "$fstab"
    return 1
}

# Copies the changes since the last revert into the empty dir $1, as a
# layer (overlayfs's whiteouts and opaque dirs are files and xattrs that
# `cp -a` keeps), without the scratch dir and apt's downloaded packages.
keep() {
    local archives=$1/var/cache/apt/archives
    alone && cp -a "$rw/upper/." "$1/" &&
        rm -rf "$1$scratch" "$archives/partial" &&
        if [ -d "$archives" ]; then find "$archives" -maxdepth 1 -name '*.deb' -delete; fi
}

# In a user namespace the submounts of an rbind (/sys with the host's
# network) are locked to their parent: only a lazy detach of the whole tree
# removes them.
down() {
    if umount -R "$root" 2>/dev/null; then
        umount "$rw"
    else
        umount -l "$root" && umount -l "$rw"
    fi
}

# Unmounts the testbed, keeping its upper layer's tmpfs.
down_root() {
    umount -R "$root" 2>/dev/null || umount -l "$root"
}

if [ "$network" = private ] && command -v ip >/dev/null; then
    ip link set lo up || echo "warning: cannot bring up the loopback interface"
fi
if ! up; then
    echo "dep8-holder: failed"
    exit 1
fi
read -r pid _ < /proc/self/stat
echo "dep8-holder: ready $pid"
while read -r command arg; do
    case $command in
        revert)
            if kill_all && down && up; then
                echo "dep8-holder: ok"
            else
                echo "dep8-holder: failed"
            fi
            ;;
        commit | stack | keep)
            if "$command" ${arg:+"$arg"}; then
                echo "dep8-holder: ok"
            else
                echo "dep8-holder: failed"
            fi
            ;;
        *) echo "dep8-holder: failed: unknown request $command" ;;
    esac
done
kill_all
umount -l "$root" 2>/dev/null
umount -l "$rw" 2>/dev/null
for kept in "$dir"/rw*; do umount -l "$kept" 2>/dev/null; done
umount -R -l "$dir/dev"
[ "$kind" = dir ] || umount -l "$lower"
rm -rf --one-file-system "$dir"
