# A NixOS-shaped system built offline from host files, without nixpkgs.
#
# It stands in for a real NixOS toplevel so that every host-side path of
# nixslave (closures, disks, boot, store layouts, networking) runs for real
# on a machine that has Nix but no nixpkgs.  It is not NixOS: stage 1 is an
# initramfs-tools initrd made from the host's kernel modules (nixslave's
# demo.py makes it) plus a small nixslave hook, stage 2 is a busybox script.
{
  name ? "demo",
  system ? builtins.currentSystem,
  kernelPath,                 # e.g. /boot/vmlinuz-6.1.0-56-amd64
  initrdPath,                 # an initramfs-tools initrd for that kernel
  modulesPath,                # /lib/modules/<version> of that kernel
  busyboxPath ? "/bin/busybox",
  networkScript ? "",         # rendered by nixslave.netconf for this node
  pingPeers ? [ ],            # addresses the guest pings after boot
  halt ? true,                # power off after boot (true) or keep running
  kernelParams ? [ "console=ttyS0,115200" "panic=-1" "loglevel=4" ],
}:
let
  importFile = n: p: builtins.path { path = p; name = n; };

  # Imported as a directory holding just the binary, so that the builder's
  # argv[0] ends in "busybox" and busybox runs as itself.
  busyboxDir = builtins.path {
    path = dirOf busyboxPath;
    name = "busybox-static";
    filter = p: _: p == busyboxPath;
  };
  busyboxBin = "${busyboxDir}/busybox";

  # The one builder every derivation here uses: busybox's shell, whose
  # applets work without PATH.
  mkDerivation = drvName: script: env:
    derivation ({
      name = drvName;
      inherit system;
      builder = busyboxBin;
      args = [ "sh" "-ec" script ];
    } // env);

  busybox = mkDerivation "busybox" ''
    mkdir -p $out/bin
    cp ${busyboxBin} $out/bin/busybox
    chmod 0555 $out/bin/busybox
    for a in $($out/bin/busybox --list); do
      [ "$a" = busybox ] || ln -s busybox $out/bin/$a
    done
  '' { };

  # A text file in the store that may refer to other store paths.
  writeScript = n: text: mkDerivation n ''
    cp "$textPath" $out
    chmod 0555 $out
  '' { inherit text; passAsFile = [ "text" ]; };

  kernel = importFile "linux-kernel" kernelPath;

  # Modules stage 1 needs for the shared store layouts; the host initrd
  # carries virtio, ext4 and the NIC drivers already.
  extraModules = [
    "kernel/fs/netfs/netfs.ko" "kernel/fs/fscache/fscache.ko"
    "kernel/net/9p/9pnet.ko" "kernel/net/9p/9pnet_virtio.ko" "kernel/fs/9p/9p.ko"
    "kernel/fs/fuse/fuse.ko" "kernel/fs/fuse/virtiofs.ko"
    # read-only store disks: erofs needs crc32c, which qemu's default CPU
    # only has in software
    "kernel/crypto/crc32c_generic.ko" "kernel/lib/libcrc32c.ko" "kernel/fs/erofs/erofs.ko"
    "kernel/fs/squashfs/squashfs.ko"
  ];
  moduleFiles = map (m: importFile (baseNameOf m) "${modulesPath}/${m}") extraModules;

  # Runs in the initrd after the root is mounted: mounts /nix/store from
  # wherever the host put it (nixslave.store= on the kernel command line).
  storeHook = builtins.toFile "nixslave-store-hook" ''
    #!/bin/sh
    case "$1" in prereqs) exit 0 ;; esac
    store=disk; storefs=ext4
    for x in $(cat /proc/cmdline); do
      case "$x" in
        nixslave.store=*) store="''${x#nixslave.store=}" ;;
        nixslave.storefs=*) storefs="''${x#nixslave.storefs=}" ;;
      esac
    done
    target="''${rootmnt}/nix/store"
    fail() { echo "nixslave stage 1: $*" > /dev/console; panic "nixslave: $*"; }
    case "$store" in
      disk) ;;
      store-disk)
        # squashfs has no label: the host's drive serial names it instead
        case "$storefs" in
          ext4) ;;
          erofs) for m in crc32c_generic libcrc32c erofs; do insmod /nixslave/modules/$m.ko 2>/dev/null; done ;;
          squashfs) insmod /nixslave/modules/squashfs.ko 2>/dev/null ;;
          *) fail "unknown store file system $storefs" ;;
        esac
        dev=/dev/disk/by-label/nixslave-store
        [ "$storefs" = squashfs ] && dev=/dev/disk/by-id/virtio-nixslave-store
        i=0; while [ ! -e "$dev" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
        [ -e "$dev" ] || fail "no store disk at $dev"
        mkdir -p "$target"
        mount -t "$storefs" -o ro "$dev" "$target" || fail "cannot mount the $storefs store disk" ;;
      9p)
        for m in netfs fscache 9pnet 9pnet_virtio 9p; do insmod /nixslave/modules/$m.ko 2>/dev/null; done
        mkdir -p "$target"
        mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose nixstore "$target" \
          || fail "cannot mount the 9p store" ;;
      virtiofs)
        for m in fuse virtiofs; do insmod /nixslave/modules/$m.ko 2>/dev/null; done
        mkdir -p "$target"
        mount -t virtiofs -o ro nixstore "$target" || fail "cannot mount the virtiofs store" ;;
      *) fail "unknown store layout $store" ;;
    esac
  '';

  # The initramfs-tools initrd followed by one more cpio archive; the kernel
  # unpacks them in order, so the hook, its ORDER file and two settings land
  # on top: conf/conf.d/nixslave sets fastboot (no fsck: the host made the
  # file system and checks it offline, and a boot must not mend what a test
  # broke), and an empty conf/modules drops the RAID modules that mdadm's
  # hook forces in; udev still loads each driver the hardware asks for.
  initrd = mkDerivation "initrd" ''
    mkdir -p root/scripts/local-bottom root/nixslave/modules root/conf/conf.d
    cp ${storeHook} root/scripts/local-bottom/nixslave
    chmod 0755 root/scripts/local-bottom/nixslave
    printf '%s\n' '/scripts/local-bottom/nixslave "$@"' \
      '[ -e /conf/param.conf ] && . /conf/param.conf' > root/scripts/local-bottom/ORDER
    echo fastboot=y > root/conf/conf.d/nixslave
    : > root/conf/modules
    for m in ${toString moduleFiles}; do cp $m root/nixslave/modules/''${m#*-}; done
    cd root
    find . -exec touch -h -d @1 {} +
    find . | sort | cpio -o -H newc -R 0:0 > ../extra.cpio
    cd ..
    # Each archive must start on a 4-byte boundary; zeros between archives
    # are skipped, so pad stage 1 to 512 bytes.
    host=${importFile "stage1-initrd" initrdPath}
    size=$(stat -c %s $host)
    cat $host > $out
    head -c $(( (512 - size % 512) % 512 )) /dev/zero >> $out
    cat extra.cpio >> $out
  '' { };

  etc = mkDerivation "etc" ''
    mkdir -p $out/nixslave
    printf '%s\n' ${name} > $out/hostname
    printf '%s\n' 'NAME=NixOS' 'ID=nixos' 'VERSION_ID="nixslave-demo"' \
      'PRETTY_NAME="nixslave demo system (stands in for NixOS)"' > $out/os-release
    printf '%s\n' '127.0.0.1 localhost' '::1 localhost' > $out/hosts
    cp ${builtins.toFile "network.sh" networkScript} $out/nixslave/network.sh
    printf '%s\n' ${toString pingPeers} > $out/nixslave/peers
  '' { };

  activate = writeScript "activate" ''
    #!${busybox}/bin/sh
    # Link /etc entries to the system's etc, as NixOS activation does.
    top=''${1:-$(dirname "$(readlink -f "$0")")}
    mkdir -p /etc /run
    ln -sfn "$top/etc" /etc/static
    for f in "$top"/etc/*; do ln -sfn "/etc/static/''${f##*/}" "/etc/''${f##*/}"; done
    ln -sfn "$top" /run/current-system
    # /bin/sh, as NixOS's binsh activation script makes it: the host's
    # guest-exec runs /bin/sh, on NixOS and here alike.
    mkdir -p /bin
    ln -sfn "$top/sw/bin/sh" /bin/sh
  '';

  # The virtio-serial driver; the host initrd does not carry it.
  virtioConsole = importFile "virtio_console.ko"
    "${modulesPath}/kernel/drivers/char/virtio_console.ko";

  # The guest agent: the part of the QEMU guest agent protocol the host uses
  # (qga/qapi-schema.json: guest-sync, guest-ping, guest-exec with
  # input-data and base64 output, guest-exec-status, guest-file-open/read/
  # write/close, guest-shutdown), on the virtio-serial port named
  # org.qemu.guest_agent.0, so one host client serves qemu-ga on NixOS and
  # this stand-in.  One compact JSON request per line, one reply per line.
  # Strings other than base64 may not contain escapes (the host sends none).
  agent = writeScript "nixslave-agent" ''
    #!${busybox}/bin/sh
    export PATH=${busybox}/bin
    dir=/run/nixslave-agent
    mkdir -p $dir && chmod 0700 $dir
    n=0
    reply() { printf '%s\n' "$1" >&3; }
    fail() { reply "{\"error\":{\"class\":\"GenericError\",\"desc\":\"$1\"}}"; }
    # num KEY / str KEY: the value of "KEY" in $line, or empty
    num() {
      case "$line" in *"\"$1\""*) ;; *) v=; return ;; esac
      v=''${line#*\"$1\"}; v=''${v#*:}; v=''${v# }; v=''${v%%[!0-9]*}
    }
    str() {
      case "$line" in *"\"$1\""*) ;; *) v=; return ;; esac
      v=''${line#*\"$1\"}; v=''${v#*:}; v=''${v#*\"}; v=''${v%%\"*}
    }
    # devtmpfs makes the port's node a moment after the driver binds (seconds
    # on a loaded TCG host); opening the name before would create a file
    while [ ! -c "$1" ]; do sleep 0.2; done
    exec 3<> "$1"
    while :; do
      # EOF while the host is not connected: wait for it
      IFS= read -r line <&3 || { sleep 0.2; continue; }
      case "$line" in
        *'"guest-sync'*) num id; reply "{\"return\":''${v:-0}}" ;;
        *'"guest-ping"'*) reply '{"return":{}}' ;;
        *'"guest-exec"'*)
          case "$line" in *'"arg"'*) fail "arg is not supported here: send input-data"; continue ;; esac
          str path; p=$v; str input-data; in=$v
          [ -x "$p" ] || { fail "cannot run $p"; continue; }
          n=$((n+1)); d=$dir/$n; mkdir -p $d
          printf '%s' "$in" | base64 -d > $d/in
          ( exec 3>&-; "$p" < $d/in > $d/out 2> $d/err; echo $? > $d/rc.new; mv $d/rc.new $d/rc ) &
          reply "{\"return\":{\"pid\":$n}}" ;;
        *'"guest-exec-status"'*)
          num pid; d=$dir/$v
          if [ -z "$v" ] || [ ! -d "$d" ]; then fail "no process $v"
          elif [ -f $d/rc ]; then
            o=$(base64 -w0 < $d/out); e=$(base64 -w0 < $d/err); rc=$(cat $d/rc); rm -rf $d
            reply "{\"return\":{\"exited\":true,\"exitcode\":$rc,\"out-data\":\"$o\",\"err-data\":\"$e\"}}"
          else reply '{"return":{"exited":false}}'; fi ;;
        *'"guest-file-open"'*)
          str path; p=$v; str mode; m=''${v:-r}
          case "$m" in
            w*) : > "$p" 2>/dev/null || { fail "cannot write $p"; continue; } ;;
            a*) touch "$p" 2>/dev/null || { fail "cannot write $p"; continue; } ;;
            *) [ -r "$p" ] || { fail "cannot read $p"; continue; } ;;
          esac
          n=$((n+1)); printf '%s' "$p" > $dir/f$n; echo 0 > $dir/o$n
          reply "{\"return\":$n}" ;;
        *'"guest-file-write"'*)
          num handle; h=$v; str buf-b64; b=$v
          [ -n "$h" ] && [ -f $dir/f$h ] || { fail "no file handle $h"; continue; }
          printf '%s' "$b" | base64 -d >> "$(cat $dir/f$h)" || { fail "write failed"; continue; }
          pad=0; case "$b" in *==) pad=2 ;; *=) pad=1 ;; esac
          reply "{\"return\":{\"count\":$(( ''${#b} / 4 * 3 - pad )),\"eof\":false}}" ;;
        *'"guest-file-read"'*)
          num handle; h=$v; num count; c=''${v:-4096}
          [ -n "$h" ] && [ -f $dir/f$h ] || { fail "no file handle $h"; continue; }
          p=$(cat $dir/f$h); o=$(cat $dir/o$h)
          data=$(tail -c +$((o + 1)) "$p" | head -c $c | base64 -w0)
          got=$(tail -c +$((o + 1)) "$p" | head -c $c | wc -c)
          o=$((o + got)); echo $o > $dir/o$h
          eof=false; [ $o -ge $(wc -c < "$p") ] && eof=true
          reply "{\"return\":{\"count\":$got,\"buf-b64\":\"$data\",\"eof\":$eof}}" ;;
        *'"guest-file-close"'*)
          num handle; rm -f $dir/f$v $dir/o$v; reply '{"return":{}}' ;;
        *'"guest-shutdown"'*) echo "NIXSLAVE-POWEROFF" > /dev/console; sync; poweroff -f ;;
        *'"execute"'*) reply '{"error":{"class":"CommandNotFound","desc":"not supported by the demo agent"}}' ;;
      esac
    done
  '';

  init = writeScript "init" ''
    #!${busybox}/bin/sh
    # Stage 2 of the demo system: what systemd does on NixOS, in a few lines.
    export PATH=${busybox}/bin
    top=@toplevel@
    say() { echo "$*" > /dev/console; }
    mounted() { grep -q " $1 " /proc/mounts 2>/dev/null; }
    mounted /proc || mount -t proc proc /proc
    mounted /sys || mount -t sysfs sys /sys
    mounted /dev || mount -t devtmpfs dev /dev
    mkdir -p /run /tmp
    mounted /run || mount -t tmpfs run /run
    $top/activate $top
    hostname "$(cat $top/etc/hostname)"
    ip link set lo up
    sh $top/etc/nixslave/network.sh > /dev/console 2>&1 || say "NIXSLAVE-NETWORK-FAILED"
    store=$(grep " /nix/store " /proc/mounts | while read -r src _ fs _; do echo "$fs $src"; done)
    say "NIXSLAVE-STORE ''${store:-rootfs}"
    if [ -n "$store" ]; then
      # The host must keep a separate store read-only even if the guest tries.
      w=no
      if mount -o remount,rw /nix/store 2>/dev/null; then
        if touch /nix/store/.nixslave-write-probe 2>/dev/null; then
          w=yes; rm -f /nix/store/.nixslave-write-probe
        fi
        mount -o remount,ro /nix/store 2>/dev/null
      fi
      say "NIXSLAVE-STORE-WRITABLE $w"
    fi
    # The guest agent, when the host gave this VM its virtio-serial port; a
    # container has none (the host enters its namespaces instead).
    # The port is named by the host a moment after the driver loads (later
    # on a loaded TCG host), so a waiter looks for it for a minute.
    insmod ${virtioConsole} 2>/dev/null && (
      i=0
      while [ $i -lt 300 ]; do
        for vp in /sys/class/virtio-ports/*; do
          [ "$(cat $vp/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && exec ${agent} /dev/''${vp##*/}
        done
        sleep 0.2; i=$((i+1))
      done
    ) < /dev/null > /dev/null 2>&1 &
    # systemd's power-off signal, which nspawn sends as KillSignal: PID 1
    # gets only the signals it has a handler for.
    trap 'say "NIXSLAVE-POWEROFF"; sync; poweroff -f' 37
    say "NIXSLAVE-BOOT-OK $top"
    ${pingPeersFor 90}
    say "NIXSLAVE-PINGS-DONE"
    sync
    if [ ${if halt then "1" else "0"} = 1 ]; then poweroff -f; fi
    # Keep running until the host asks for a power-off on the console.
    while :; do
      if read -r cmd < /dev/console; then
        case "$cmd" in poweroff) say "NIXSLAVE-POWEROFF"; sync; poweroff -f ;; esac
      else
        sleep 1
      fi
    done
  '';

  # Shell that pings each of the system's peers (up to `tries` one-second
  # tries each) and reports every result on the console; boot and switch
  # both run it, with $top set to the system.
  pingPeersFor = tries: ''
    for peer in $(cat $top/etc/nixslave/peers); do
      case "$peer" in *:*) p=ping6 ;; *) p=ping ;; esac
      ok=fail; i=0
      while [ $i -lt ${toString tries} ]; do
        if $p -c 1 -W 1 "$peer" > /dev/null 2>&1; then ok=ok; break; fi
        i=$((i+1))
      done
      say "NIXSLAVE-PING $peer $ok"
    done
  '';

  switchToConfiguration = writeScript "switch-to-configuration" ''
    #!${busybox}/bin/sh
    # The host switches a running slave (nixslave switch) with "test": link
    # the new system, apply its network, report; the host itself decides
    # the next boot.  Like NixOS's, a failure exits 4 and leaves the new
    # system half applied: the host then switches back.
    export PATH=${busybox}/bin
    top=@toplevel@
    say() { echo "$*" > /dev/console; }
    case "$1" in
      switch|test)
        $top/activate $top
        hostname "$(cat $top/etc/hostname)"
        rc=0
        sh $top/etc/nixslave/network.sh > /dev/console 2>&1 || { say "NIXSLAVE-NETWORK-FAILED"; rc=4; }
        ${pingPeersFor 5}
        say "NIXSLAVE-SWITCH-OK $top"
        exit $rc ;;
      *) echo "switch-to-configuration: '$1' is done by the host (nixslave switch)" >&2
         exit 1 ;;
    esac
  '';
in
mkDerivation "nixos-system-${name}-nixslave-demo" ''
  mkdir -p $out/bin
  ln -s ${kernel} $out/kernel
  ln -s ${initrd} $out/initrd
  ln -s ${etc} $out/etc
  ln -s ${busybox} $out/sw
  echo -n "${toString kernelParams}" > $out/kernel-params
  echo -n "nixslave-demo" > $out/nixos-version
  echo -n "${system}" > $out/system
  sed "s|@toplevel@|$out|g" ${init} > $out/init
  cp ${activate} $out/activate
  sed "s|@toplevel@|$out|g" ${switchToConfiguration} > $out/bin/switch-to-configuration
  chmod 0555 $out/init $out/activate $out/bin/switch-to-configuration
'' { }
