#!/bin/sh
# /init of a vfstrace guest (busybox). Loads the boot modules, mounts the
# host's / read-only over 9p with a tmpfs overlay on top, chroots into it
# with the usual kernel filesystems, and runs /guest_run.py there, which
# reads the command (a JSON argv) from the results share. Always powers off:
# the host reads the exit code from the share, not from qemu.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

say() { echo "vfstrace-init: [$(cut -d" " -f1 /proc/uptime) s] $*"; }
# Power off; a kernel without ACPI power-off reboots instead after a moment,
# which qemu's -no-reboot turns into an exit.
off() { sync; echo o > /proc/sysrq-trigger; sleep 3; echo b > /proc/sysrq-trigger; sleep 10; poweroff -f; }

# Load in modules.dep order; a module whose dependency is built in or
# ordered differently is retried until a round loads nothing new.
pending=$(cat /modules.order)
while :; do
    left=""; loaded=0
    for m in $pending; do
        if insmod "/lib/modules/$m" 2>/dev/null; then loaded=1; else left="$left $m"; fi
    done
    pending=$left
    { [ -z "$pending" ] || [ $loaded = 0 ]; } && break
done
[ -n "$left" ] && say "modules not loaded:$left (may be built in)"
say "modules loaded"

if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288 hostroot /host; then
    say "cannot mount the host root over 9p"; off
fi
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/u /upper/w
if ! mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /newroot; then
    say "cannot mount the overlay"; off
fi
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
# /tmp stays on the overlay (writable, tmpfs-backed) rather than a tmpfs of
# its own, so a checkout or cache under the host's /tmp is visible inside.
chmod 1777 $R/tmp
mount -t tmpfs -o mode=0755 tmpfs $R/run
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t securityfs securityfs $R/sys/kernel/security 2>/dev/null
mount -t bpf bpf $R/sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
mkdir -p $R/vmout
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 vmout $R/vmout; then
    say "cannot mount the results share"; off
fi
mkdir -p $R/run/vfstrace
cp /guest_run.py $R/run/vfstrace/guest_run.py
say "root mounted; starting the runner"
chroot $R /usr/bin/python3 /run/vfstrace/guest_run.py /vmout/.vm/spec.json
say "runner exited with $?"
off
