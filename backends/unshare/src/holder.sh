# dep8's unshare holder: pid 1 of a testbed's pid namespace, inside its own
# mount, uts, ipc (and by default net) namespaces. It mounts the testbed,
# answers `revert` requests on stdin (one line each: `dep8-holder: ok` or
# `dep8-holder: failed`), and on end of input (dep8 closed the testbed, or
# died) kills everything, unmounts and removes DIR. Every mount lives in the
# private mount namespace, so the host's mount table never changes.
# A tarball is unpacked once into a tmpfs at DIR/lower (fast, and gone with
# the namespace); a directory is used in place.
# Usage: holder.sh DIR (tarball|dir) PATH SCRATCH (private|host) (yes|no)
set -u
exec 2>&1
dir=$1 kind=$2 source=$3 scratch=$4 network=$5 baseimage=$6
root=$dir/root
rw=$dir/rw
lower=$source
if [ "$kind" = tarball ]; then
    lower=$dir/lower
    mkdir "$lower" &&
        mount -t tmpfs -o mode=0755 dep8-lower "$lower" &&
        tar --numeric-owner -C "$lower" -xf "$source" || {
        echo "dep8-holder: failed to unpack $source"
        exit 1
    }
fi
hostname=$(cat /proc/sys/kernel/hostname)

# A fresh testbed: an empty tmpfs upper layer over the pristine LOWER.
up() {
    mount -t tmpfs -o mode=0755 dep8-rw "$rw" &&
        mkdir "$rw/upper" "$rw/work" &&
        mount -t overlay -o "lowerdir=$lower,upperdir=$rw/upper,workdir=$rw/work" dep8-root "$root" &&
        mkdir -p "$root/proc" "$root/sys" "$root/dev" &&
        mount -t proc -o nosuid,nodev,noexec proc "$root/proc" &&
        mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys" &&
        mount -t tmpfs -o mode=0755,nosuid dep8-dev "$root/dev" &&
        for node in null zero full random urandom tty; do
            touch "$root/dev/$node" && mount --bind "/dev/$node" "$root/dev/$node" || return 1
        done &&
        ln -s /proc/self/fd "$root/dev/fd" &&
        ln -s /proc/self/fd/0 "$root/dev/stdin" &&
        ln -s /proc/self/fd/1 "$root/dev/stdout" &&
        ln -s /proc/self/fd/2 "$root/dev/stderr" &&
        mkdir "$root/dev/pts" "$root/dev/shm" &&
        mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$root/dev/pts" &&
        ln -s pts/ptmx "$root/dev/ptmx" &&
        mount -t tmpfs -o mode=1777,nosuid,nodev dep8-shm "$root/dev/shm" &&
        mkdir -p -m 0755 "$root$scratch" &&
        if [ "$baseimage" = yes ]; then
            mkdir -p "$root/run/dep8/baseimage" &&
                mount --bind "$lower" "$root/run/dep8/baseimage" &&
                mount -o remount,bind,ro "$root/run/dep8/baseimage"
        fi &&
        if [ "$network" = host ]; then
            rm -f "$root/etc/resolv.conf" && cp -L /etc/resolv.conf "$root/etc/resolv.conf"
        fi &&
        echo "$hostname" > /proc/sys/kernel/hostname
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

down() {
    umount -R "$root" && umount "$rw"
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
while read -r command; do
    case $command in
        revert)
            if kill_all && down && up; then
                echo "dep8-holder: ok"
            else
                echo "dep8-holder: failed"
            fi
            ;;
        *) echo "dep8-holder: failed: unknown request $command" ;;
    esac
done
kill_all
umount -R -l "$root" 2>/dev/null
umount -l "$rw" 2>/dev/null
[ "$kind" = dir ] || umount -l "$lower"
rm -rf --one-file-system "$dir"
